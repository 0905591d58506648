"""kv_cache_dtype: float8 KV caches through the engine (the op-level checks are in
tests/ops/test_ops_float8_cache.py)."""

from __future__ import annotations

import pytest
import torch

from corral import EngineArgs, NotSupportedError
from corral.default_model import default_model_path
from corral.entrypoints.cli import build_parser
from corral.llm import LLM
from corral.model.loader import resolve_kv_cache_dtype
from corral.sampling_params import SamplingParams

KV_MEMORY = 4 * 2**20


def make_llm(kv_cache_dtype: str, dtype: str = "bfloat16") -> LLM:
    return LLM(
        default_model_path(),
        dtype=dtype,
        kv_cache_dtype=kv_cache_dtype,
        kv_cache_memory=KV_MEMORY,
        max_model_len=256,
    )


def greedy_story(llm: LLM) -> list[int]:
    params = SamplingParams(temperature=0.0, max_tokens=12)
    out = llm.generate(["Once upon a time"], params, use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


@pytest.fixture(scope="module")
def reference_story() -> list[int]:
    return greedy_story(make_llm("auto"))


@pytest.mark.parametrize(
    ("name", "cache_dtype"),
    [("fp8", torch.float8_e4m3fn), ("fp8_e4m3", torch.float8_e4m3fn),
     ("fp8_e5m2", torch.float8_e5m2)],
)  # fmt: skip
def test_a_float8_cache_holds_twice_the_blocks_of_bfloat16(
    name: str, cache_dtype: torch.dtype
) -> None:
    bf16 = make_llm("auto")
    fp8 = make_llm(name)
    config = fp8.engine_core.runner.model_config
    assert config.cache_dtype == cache_dtype and config.dtype == torch.bfloat16
    assert config.kv_bytes_per_token * 2 == bf16.engine_core.runner.model_config.kv_bytes_per_token
    blocks = fp8.engine_core.config.num_kv_blocks
    assert blocks == 2 * bf16.engine_core.config.num_kv_blocks
    cache = fp8.engine_core.runner.kv_cache
    assert {t.dtype for t in cache.layers[0]} == {cache_dtype}


def test_the_trained_default_model_tells_the_same_story_with_an_e4m3_cache(
    reference_story: list[int],
) -> None:
    # Three mantissa bits in the cache leave the greedy continuation of the
    # embedded model unchanged; e5m2 (two bits) is only required to run.
    assert greedy_story(make_llm("fp8")) == reference_story
    story = greedy_story(make_llm("fp8_e5m2"))
    assert len(story) == 12 and story == greedy_story(make_llm("fp8_e5m2"))


def test_float32_weights_with_a_float8_cache() -> None:
    llm = make_llm("fp8", dtype="float32")
    assert llm.engine_core.runner.model_config.cache_dtype == torch.float8_e4m3fn
    assert len(greedy_story(llm)) == 12


def test_an_unknown_kv_cache_dtype_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineArgs(model="m", kv_cache_dtype="int4")


def test_float8_caches_are_refused_on_cuda_with_the_reason() -> None:
    with pytest.raises(NotSupportedError, match="CPU kernels only"):
        resolve_kv_cache_dtype("fp8", "cuda")
    assert resolve_kv_cache_dtype("auto", "cuda") is None


def test_the_cli_flag_reaches_the_engine_args() -> None:
    namespace = build_parser().parse_args(["serve", "--kv-cache-dtype", "fp8_e5m2"])
    assert namespace.kv_cache_dtype == "fp8_e5m2"
