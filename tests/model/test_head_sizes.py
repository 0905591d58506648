"""A model whose head size the device's attention kernels cannot run is refused at load.

Issue 16: the CUDA kernels took head sizes 64/80/96/128/256 only, so the embedded
default model (head size 32) loaded on a GPU and then killed the engine at its
first step. Runs without a GPU: the check precedes any CUDA allocation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from corral.default_model import default_model_path
from corral.model.config import hf_head_size
from corral.model.head_sizes import check_head_size, head_size_support
from corral.model.loader import load_model


def write_llama_config(folder: Path, head_dim: int) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        max_position_embeddings=64,
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head_size", [16, 32, 48, 80, 112, 256, 272, 512])
def test_cpu_kernels_take_every_multiple_of_16(head_size: int) -> None:
    assert head_size_support("cpu").accepts(head_size)
    check_head_size(head_size, "cpu")


@pytest.mark.parametrize("head_size", [16, 32, 48, 64, 80, 96, 112, 128, 144, 208, 240, 256])
def test_cuda_kernels_take_multiples_of_16_up_to_256(head_size: int) -> None:
    assert head_size_support("cuda").accepts(head_size)
    check_head_size(head_size, "cuda:0")


@pytest.mark.parametrize(
    ("device", "head_size"), [("cpu", 24), ("cpu", 8), ("cuda", 24), ("cuda", 272), ("cuda", 0)]
)
def test_unsupported_head_size_is_a_value_error_naming_the_rule(
    device: str, head_size: int
) -> None:
    with pytest.raises(
        ValueError,
        match=rf"heads of size {head_size}, but corral's {device} attention kernels need a multiple of 16",
    ):
        check_head_size(head_size, device)


def test_device_without_kernels_is_refused() -> None:
    with pytest.raises(ValueError, match="no attention kernels for 'meta'"):
        head_size_support("meta")


def test_default_model_head_size_runs_on_cuda_kernels() -> None:
    config = json.loads((Path(default_model_path()) / "config.json").read_text())
    head_size = hf_head_size(transformers.PretrainedConfig(**config))
    assert head_size_support("cuda").accepts(head_size)


def test_load_refuses_a_head_size_the_cuda_kernels_cannot_run(tmp_path: Path) -> None:
    # 272 runs on the CPU kernels but not on CUDA: the device decides.
    folder = write_llama_config(tmp_path, head_dim=272)
    with pytest.raises(
        ValueError, match=r"LlamaForCausalLM model has attention heads of size 272.*cuda.*up to 256"
    ):
        load_model(str(folder), load_format="dummy", device="cuda")
    _, config = load_model(str(folder), load_format="dummy", device="cpu", dtype="float32")
    assert config.head_size == 272


def test_load_refuses_a_head_size_the_cpu_kernels_cannot_run(tmp_path: Path) -> None:
    folder = write_llama_config(tmp_path, head_dim=24)
    with pytest.raises(ValueError, match="heads of size 24, but corral's cpu attention kernels"):
        load_model(str(folder), load_format="dummy", device="cpu")


def test_llm_construction_fails_with_the_head_size_error(tmp_path: Path) -> None:
    from corral.llm import LLM

    folder = write_llama_config(tmp_path, head_dim=24)
    with pytest.raises(ValueError, match="heads of size 24"):
        LLM(str(folder), load_format="dummy", device="cpu")
