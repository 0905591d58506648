"""Loading HF folders: checkpoint formats, dtypes, dummy weights and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from corral.model.loader import load_model
from tests.model.zoo import ModelZoo


def hf_weights(zoo: ModelZoo, name: str) -> dict[str, torch.Tensor]:
    return zoo.hf_model(name).state_dict()


def assert_llama_weights_equal(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    attn = model.model.layers[1].self_attn
    q, _, v = attn.qkv_proj.split(attn.qkv_proj.weight.T)
    torch.testing.assert_close(q.T, reference["model.layers.1.self_attn.q_proj.weight"])
    torch.testing.assert_close(v.T, reference["model.layers.1.self_attn.v_proj.weight"])
    _, up = model.model.layers[0].mlp.gate_up_proj.weight.chunk(2)
    torch.testing.assert_close(up, reference["model.layers.0.mlp.up_proj.weight"])
    torch.testing.assert_close(model.lm_head.weight, reference["lm_head.weight"])


def test_sharded_safetensors_are_read_through_the_index(zoo: ModelZoo, tmp_path: Path) -> None:
    zoo.hf_model("llama").save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, config = load_model(str(tmp_path), dtype="float32")
    assert config.architecture == "LlamaForCausalLM"
    assert_llama_weights_equal(model, hf_weights(zoo, "llama"))


def test_pytorch_bin_checkpoint_is_read(zoo: ModelZoo, tmp_path: Path) -> None:
    zoo.hf_model("llama").config.save_pretrained(tmp_path)
    torch.save(hf_weights(zoo, "llama"), tmp_path / "pytorch_model.bin")
    model, _ = load_model(str(tmp_path), dtype="float32")
    assert_llama_weights_equal(model, hf_weights(zoo, "llama"))


def test_gpt2_conv1d_weights_are_transposed(zoo: ModelZoo) -> None:
    model, _ = load_model(str(zoo.path("gpt2")), dtype="float32")
    reference = hf_weights(zoo, "gpt2")
    torch.testing.assert_close(
        model.transformer.h[0].attn.c_attn.weight,
        reference["transformer.h.0.attn.c_attn.weight"].T,
    )


def _with_config_dtype(zoo: ModelZoo, tmp_path: Path, dtype: str) -> Path:
    shutil.copytree(zoo.path("llama"), tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = dtype
    config_path.write_text(json.dumps(config))
    return tmp_path / "m"


def test_auto_dtype_turns_float16_into_bfloat16_on_cpu(zoo: ModelZoo, tmp_path: Path) -> None:
    model, config = load_model(str(_with_config_dtype(zoo, tmp_path, "float16")))
    assert config.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_explicit_dtype_is_used(
    zoo: ModelZoo, tmp_path: Path, dtype: str, expected: torch.dtype
) -> None:
    model, config = load_model(str(_with_config_dtype(zoo, tmp_path, "float32")), dtype=dtype)
    assert config.dtype == expected
    assert model.model.embed_tokens.weight.dtype == expected
    # The rotary table stays float32 so positions keep their precision.
    assert model.model.rotary.cos_sin_cache.dtype == torch.float32


def test_dummy_weights_need_no_checkpoint_and_follow_the_seed(
    zoo: ModelZoo, tmp_path: Path
) -> None:
    zoo.hf_model("qwen2").config.save_pretrained(tmp_path)
    first, _ = load_model(str(tmp_path), load_format="dummy", seed=1, dtype="float32")
    again, _ = load_model(str(tmp_path), load_format="dummy", seed=1, dtype="float32")
    other, _ = load_model(str(tmp_path), load_format="dummy", seed=2, dtype="float32")
    weight = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def test_unknown_model_id_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a local folder and is not in the local Hugging Face"):
        load_model("no-such-org/no-such-model")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    transformers.BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        load_model(str(tmp_path), load_format="dummy")


def test_folder_without_weights_is_a_clear_error(zoo: ModelZoo, tmp_path: Path) -> None:
    zoo.hf_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        load_model(str(tmp_path))


def test_checkpoint_missing_a_tensor_is_rejected(zoo: ModelZoo, tmp_path: Path) -> None:
    zoo.hf_model("llama").config.save_pretrained(tmp_path)
    weights = hf_weights(zoo, "llama")
    del weights["model.layers.1.self_attn.k_proj.weight"]
    torch.save(weights, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"self_attn\.qkv_proj\.k\.weight"):
        load_model(str(tmp_path))


def test_max_model_len_beyond_the_model_is_rejected(zoo: ModelZoo) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        load_model(str(zoo.path("llama")), max_model_len=4096)
