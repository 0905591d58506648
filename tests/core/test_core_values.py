"""SamplingParams, EngineArgs and CoreConfig validation."""

import pytest

from corral.config import AsyncEngineArgs, CoreConfig, EngineArgs
from corral.errors import CorralError, NotSupportedError
from corral.sampling_params import SamplingParams


def test_sampling_params_defaults_follow_vllm() -> None:
    params = SamplingParams()
    assert (params.n, params.best_of, params.temperature, params.top_p, params.top_k) == (
        1,
        1,
        1.0,
        1.0,
        -1,
    )
    assert params.max_tokens == 16
    assert params.stop == () and params.stop_token_ids == ()


def test_best_of_defaults_to_n() -> None:
    assert SamplingParams(n=3).best_of == 3


def test_stop_is_normalized_to_a_tuple() -> None:
    assert SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=["x", "yz"]).stop == ("x", "yz")
    assert SamplingParams(stop_token_ids=[5, 6]).stop_token_ids == (5, 6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "n"),
        ({"n": 2, "best_of": 1}, "best_of"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"temperature": 0.0, "n": 2}, "best_of"),
        ({"logits_processors": [3]}, "logits_processors"),
    ],
)
def test_sampling_params_rejects_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SamplingParams(**kwargs)


def test_greedy_resets_truncation_parameters() -> None:
    params = SamplingParams(temperature=0.0, top_p=0.5, top_k=3, min_p=0.2)
    assert params.greedy
    assert (params.top_p, params.top_k, params.min_p) == (1.0, -1, 0.0)


def test_not_supported_error_is_a_not_implemented_error() -> None:
    # Beam search, once refused with it, is supported now (tests/beam).
    assert issubclass(NotSupportedError, NotImplementedError)
    assert issubclass(NotSupportedError, CorralError)


def test_engine_args_validate_fields() -> None:
    with pytest.raises(ValueError, match=r"^dtype must be one of"):
        EngineArgs(model="m", dtype="int3")
    with pytest.raises(ValueError, match=r"^preemption_mode must be one of"):
        EngineArgs(model="m", preemption_mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_num_batched_tokens must be at least max_num_seqs"):
        EngineArgs(model="m", max_num_seqs=8, max_num_batched_tokens=4)
    with pytest.raises(ValueError, match=r"^block_size must be a positive integer"):
        EngineArgs(model="m", block_size=0)


def test_worker_use_ray_means_the_ray_executor() -> None:
    assert EngineArgs(model="m").executor_backend == "mp"
    assert EngineArgs(model="m", worker_use_ray=True).executor_backend == "ray"
    assert EngineArgs(model="m", distributed_executor_backend="ray").executor_backend == "ray"
    with pytest.raises(ValueError, match=r"^distributed_executor_backend must be 'ray' or None"):
        EngineArgs(model="m", worker_use_ray=True, distributed_executor_backend="mp")


def test_core_config_defaults_the_budget() -> None:
    chunked = EngineArgs(model="m").core_config(
        num_kv_blocks=1000, num_host_blocks=10, max_model_len=4096
    )
    assert chunked.max_num_batched_tokens == 2048
    whole = EngineArgs(model="m", enable_chunked_prefill=False).core_config(
        num_kv_blocks=1000, num_host_blocks=10, max_model_len=4096
    )
    assert whole.max_num_batched_tokens == 4096


def test_core_config_rejects_a_cache_smaller_than_one_sequence() -> None:
    with pytest.raises(ValueError, match=r"^max_model_len must be at most the KV cache"):
        EngineArgs(model="m").core_config(num_kv_blocks=4, num_host_blocks=0, max_model_len=100)


def test_core_config_without_chunked_prefill_needs_budget_for_a_whole_prompt() -> None:
    with pytest.raises(ValueError, match=r"^max_num_batched_tokens must be at least max_model_len"):
        CoreConfig(
            num_kv_blocks=10,
            max_model_len=64,
            max_num_seqs=4,
            max_num_batched_tokens=32,
            enable_chunked_prefill=False,
        )


def test_async_engine_args_add_logging_options() -> None:
    args = AsyncEngineArgs(model="m", max_log_len=10)
    assert args.log_requests and not args.disable_log_stats and args.max_log_len == 10
    with pytest.raises(ValueError, match=r"^max_log_len must be"):
        AsyncEngineArgs(model="m", max_log_len=-1)
