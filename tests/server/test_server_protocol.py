"""Request models, error bodies, SSE framing, metrics and CLI options, each on its own."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from corral.config import AsyncEngineArgs
from corral.entrypoints.cli import _ENGINE_SKIP, _engine_args, benchmark_script, build_parser
from corral.entrypoints.cli_args import field_docs
from corral.entrypoints.errors import APIError, error_body, field_of
from corral.entrypoints.metrics import ServerMetrics
from corral.entrypoints.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
from corral.entrypoints.serving_chat import render_chat
from corral.entrypoints.sse import format_event
from corral.outputs import CompletionOutput, RequestMetrics, RequestOutput
from corral.stats import EngineStats


def test_completion_request_maps_sampling_fields_by_vllm_names() -> None:
    request = CompletionRequest.model_validate(
        {
            "prompt": "hi",
            "n": 2,
            "best_of": 3,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "min_p": 0.1,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.2,
            "seed": 7,
            "stop": "x",
            "ignore_eos": True,
        }
    )
    params = request.sampling_params(max_tokens=9, default_temperature=1.0, logprobs=2)
    assert (params.n, params.best_of, params.max_tokens, params.logprobs) == (2, 3, 9, 2)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.5, 0.9, 5, 0.1)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert (params.repetition_penalty, params.seed, params.stop) == (1.2, 7, ("x",))
    assert params.ignore_eos


def test_unset_best_of_means_n() -> None:
    request = CompletionRequest.model_validate({"prompt": "hi", "n": 3})
    params = request.sampling_params(max_tokens=4, default_temperature=1.0, logprobs=None)
    assert params.best_of == 3


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_prompt_forms_become_separate_prompts(prompt: object, expected: list[object]) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).prompts() == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stream": True, "use_beam_search": True}, "use_beam_search"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ],
)
def test_invalid_completion_fields_are_named(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    assert field in str(info.value)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="max_token"):
        CompletionRequest.model_validate({"prompt": "x", "max_token": 3})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "f"}]}, "tools"),
    ],
)
def test_invalid_chat_fields_are_named(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    assert field in str(info.value)


def test_chat_max_completion_tokens_wins_over_max_tokens() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    request = ChatCompletionRequest.model_validate(
        {"messages": messages, "max_tokens": 5, "max_completion_tokens": 3}
    )
    assert request.requested_max_tokens == 3
    assert request.messages[0].text() == "ab"


def test_sampling_params_errors_name_their_field() -> None:
    assert field_of("top_p must be in (0, 1], got 7.0") == "top_p"
    assert field_of("prompt: must not be empty") == "prompt"
    assert field_of("sampling_params.best_of=9 exceeds max_num_seqs=4") == "best_of"
    assert field_of("something else went wrong") is None


def test_sse_events_are_data_lines_with_compact_json() -> None:
    assert format_event({"a": [1, 2]}) == b'data: {"a":[1,2]}\n\n'
    assert format_event("[DONE]") == b"data: [DONE]\n\n"


def _stats(**overrides: float) -> EngineStats:
    values: dict[str, float] = {
        "num_running": 3,
        "num_waiting": 2,
        "num_swapped": 0,
        "num_unfinished_requests": 5,
        "num_free_blocks": 6,
        "num_total_blocks": 8,
        "kv_cache_usage": 0.25,
        "num_preemptions": 1,
        "prefix_cache_queries": 40,
        "prefix_cache_hits": 16,
        "num_prompt_tokens": 40,
        "num_generation_tokens": 12,
    }
    values.update(overrides)
    return EngineStats(**values)  # type: ignore[arg-type]


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_metrics_expose_engine_stats_under_vllm_names() -> None:
    text = ServerMetrics(_stats, "m").render().decode()
    assert _sample(text, "corral:num_requests_running") == 3
    assert _sample(text, "corral:num_requests_waiting") == 2
    assert _sample(text, "corral:kv_cache_usage_perc") == 0.25
    assert _sample(text, "corral:num_preemptions_total") == 1
    assert _sample(text, "corral:prefix_cache_queries_total") == 40
    assert _sample(text, "corral:prefix_cache_hits_total") == 16
    assert _sample(text, "corral:prompt_tokens_total") == 40
    assert _sample(text, "corral:generation_tokens_total") == 12


def test_metrics_record_latencies_and_aborts() -> None:
    metrics = ServerMetrics(_stats, "m")
    timing = RequestMetrics(
        arrival_time=100.0, first_token_time=100.5, last_token_time=101.5, finished_time=101.5
    )
    completion = CompletionOutput(0, "abc", [5, 6, 7], -1.0, None, "length")
    metrics.observe_finished(RequestOutput("r", "p", [1, 2], None, [completion], True, timing))
    metrics.observe_aborted()
    text = metrics.render().decode()
    assert 'corral:request_success_total{finished_reason="length",model_name="m"} 1.0' in text
    assert 'corral:request_success_total{finished_reason="abort",model_name="m"} 1.0' in text
    assert _sample(text, "corral:time_to_first_token_seconds_sum") == 0.5
    assert _sample(text, "corral:time_per_output_token_seconds_sum") == 0.5
    assert _sample(text, "corral:e2e_request_latency_seconds_sum") == 1.5
    assert _sample(text, "corral:request_generation_tokens_sum") == 3


def test_every_engine_field_has_a_documented_option() -> None:
    parser = build_parser()
    docs = field_docs(AsyncEngineArgs)
    serve_help = parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for field in docs:
        option = "--" + field.replace("_", "-")
        if field in _ENGINE_SKIP:
            # Not offered: the model is positional, and the other fields only raise
            # NotSupportedError until their issue lands.
            assert option not in serve_help
        else:
            assert option in serve_help


def test_serve_options_map_one_to_one_to_engine_args() -> None:
    namespace = build_parser().parse_args(
        [
            "serve",
            "m",
            "--max-model-len",
            "64",
            "--no-enable-prefix-caching",
            "--preemption-mode",
            "swap",
        ]
    )
    args = _engine_args(namespace)
    assert args == AsyncEngineArgs(
        model="m", max_model_len=64, enable_prefix_caching=False, preemption_mode="swap"
    )
    assert namespace.host == "127.0.0.1"
    assert not args.trust_remote_code


def test_generate_collects_repeated_stop_strings() -> None:
    namespace = build_parser().parse_args(
        ["generate", "m", "hello", "--stop", "a", "--stop", "b", "--temperature", "0"]
    )
    assert namespace.stop == ["a", "b"]
    assert namespace.temperature == 0.0


def test_missing_benchmark_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match=r"no_such_benchmark\.py"):
        benchmark_script("no_such_benchmark")


def test_error_body_has_openai_shape() -> None:
    body = error_body(413, "too big")
    assert json.loads(json.dumps(body)) == {
        "error": {"message": "too big", "type": "RequestTooLargeError", "param": None, "code": 413}
    }


def test_chat_template_refusal_is_a_400_on_messages(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = "{{ raise_exception('only user messages, please') }}"
    ctx = types.SimpleNamespace(tokenizer=tokenizer)
    messages = [ChatMessage(role="user", content="x")]
    with pytest.raises(APIError, match="only user messages, please") as info:
        render_chat(ctx, messages, add_generation_prompt=True)  # type: ignore[arg-type]
    assert (info.value.status, info.value.param) == (400, "messages")
