"""Assembling an engine core from EngineArgs: cache sizing, host blocks, devices."""

from __future__ import annotations

import logging

import pytest
import torch

from corral._compose import build_engine_core
from corral.config import EngineArgs
from corral.model.factory import resolve_device
from tests.model.zoo import ModelZoo

MODEL = "qwen2"


def build(zoo: ModelZoo, **kwargs: object) -> tuple:
    args = EngineArgs(model=str(zoo.path(MODEL)), dtype="float32", max_model_len=256, **kwargs)
    return build_engine_core(args)


def test_kv_cache_memory_sets_the_block_count(zoo: ModelZoo) -> None:
    core, _, model_config = build(zoo, kv_cache_memory=2**20, block_size=16)
    expected = 2**20 // (16 * model_config.kv_bytes_per_token)
    assert core.config.num_kv_blocks == expected
    assert core.runner.kv_cache.num_blocks == expected


def test_default_cache_is_capped_at_max_num_seqs_full_sequences(zoo: ModelZoo) -> None:
    core, _, _ = build(zoo, max_num_seqs=3, block_size=16)
    assert core.config.num_kv_blocks == 3 * 256 // 16


def test_the_cache_size_is_logged(zoo: ModelZoo, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="corral.model.kv_cache"):
        build(zoo, num_kv_blocks=40, block_size=16)
    assert "40 blocks of 16 tokens (640 tokens" in caplog.text


@pytest.mark.parametrize(("mode", "has_host_blocks"), [("swap", True), ("recompute", False)])
def test_host_blocks_exist_only_for_swap_preemption(
    zoo: ModelZoo, mode: str, has_host_blocks: bool
) -> None:
    core, _, model_config = build(zoo, num_kv_blocks=40, preemption_mode=mode, swap_space=0.001)
    expected = int(0.001 * 2**30) // (16 * model_config.kv_bytes_per_token)
    assert core.config.num_host_blocks == (expected if has_host_blocks else 0)


def test_a_cache_smaller_than_one_full_sequence_is_rejected(zoo: ModelZoo) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        build(zoo, num_kv_blocks=4, block_size=16)


def test_eos_comes_from_the_model_config_and_the_tokenizer(zoo: ModelZoo) -> None:
    core, tokenizer, _ = build(zoo, num_kv_blocks=40)
    assert tokenizer.eos_token_id in core.eos_token_ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_device_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device("cuda")
