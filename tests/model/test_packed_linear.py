"""Linear weights prepacked for oneDNN (bfloat16 on CPUs with hardware bfloat16)."""

from __future__ import annotations

import pytest
import torch

from corral.model import loader
from corral.model.config import cpu_has_fast_bfloat16
from corral.model.layers.linear import Linear
from corral.model.layers.parallel import VocabParallelEmbedding
from tests.model.zoo import ModelZoo


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [(1,), (7,), (3, 5)])
def test_a_packed_layer_computes_what_f_linear_does(bias: bool, rows: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = Linear(64, 48, bias=bias).to(torch.bfloat16)
    x = torch.randn(*rows, 64, dtype=torch.bfloat16)
    expected = torch.nn.functional.linear(x.float(), layer.weight.float(), None)
    if bias:
        expected = expected + layer.bias.float()
    layer.prepack()
    out = layer(x)
    assert out.shape == (*rows, 48) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=2e-2)


def test_a_packed_layer_releases_its_plain_weight_and_refuses_writes() -> None:
    layer = Linear(64, 48, bias=False).to(torch.bfloat16)
    layer.prepack()
    weight = layer.weight
    assert weight.shape == (48, 64) and weight.dtype == torch.bfloat16
    assert weight.stride() == (0, 0)  # one element's memory
    with pytest.raises(RuntimeError):
        weight.data.copy_(torch.ones(48, 64))


@pytest.mark.skipif(not cpu_has_fast_bfloat16(), reason="needs AVX512-BF16 or AMX")
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_bfloat16_models_run_packed_on_this_cpu(zoo: ModelZoo, name: str) -> None:
    llm = zoo.llm(name, dtype="bfloat16")
    model = llm.engine_core.runner.model
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(m.packed_weight is not None for m in linears)
    llm.generate(prompt_token_ids=[[3, 4, 5]], use_tqdm=False)
    # Only the embedding that computes the logits packed a copy, on first use.
    packed = [m for m in model.modules() if isinstance(m, VocabParallelEmbedding)]
    assert sum(m.packed_weight is not None for m in packed) == 1


def test_float32_and_cpus_without_hardware_bfloat16_stay_unpacked(
    zoo: ModelZoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = zoo.llm("llama", dtype="float32")
    model = llm.engine_core.runner.model
    assert all(m.packed_weight is None for m in model.modules() if isinstance(m, Linear))
    monkeypatch.setattr(loader, "cpu_has_fast_bfloat16", lambda: False)
    llm = zoo.llm("llama", dtype="bfloat16", seed=12345)  # not the cached engine
    model = llm.engine_core.runner.model
    assert all(m.packed_weight is None for m in model.modules() if isinstance(m, Linear))
