"""Hypothesis-drawn request bodies against a live server: never a 500, never a dead engine.

Bodies mix valid values with wrong types, out-of-range numbers and unknown fields;
``max_tokens`` is always present and small so that valid requests stay quick.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from corral.entrypoints.protocol import ChatCompletionRequest, CompletionRequest
from tests.server.server_helpers import SERVED_NAME, ServerProcess

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def wild(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes any JSON at all."""
    return st.one_of(plausible, plausible, ANY_JSON)


SAMPLING = {
    "model": wild(st.sampled_from([SERVED_NAME, "other"])),
    "n": wild(st.integers(-1, 3)),
    "best_of": wild(st.integers(-1, 4)),
    "temperature": wild(st.floats(-1, 3)),
    "top_p": wild(st.floats(-0.5, 1.5)),
    "top_k": wild(st.integers(-2, 50)),
    "min_p": wild(st.floats(-0.5, 1.5)),
    "presence_penalty": wild(st.floats(-3, 3)),
    "frequency_penalty": wild(st.floats(-3, 3)),
    "repetition_penalty": wild(st.floats(-1, 3)),
    "seed": wild(st.integers(-5, 2**65)),
    "stop": wild(st.lists(st.text(max_size=3), max_size=3) | st.text(max_size=3)),
    "stop_token_ids": wild(st.lists(st.integers(-2, 400), max_size=3)),
    "min_tokens": wild(st.integers(-1, 4)),
    "ignore_eos": wild(st.booleans()),
    "stream": st.booleans(),
    "stream_options": wild(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "user": wild(st.text(max_size=5)),
    "logit_bias": wild(
        st.dictionaries(st.sampled_from(["1", "7", "-1", "x", "99999"]), st.floats(-200, 200))
    ),
    "allowed_token_ids": wild(st.lists(st.integers(-1, 400), max_size=3)),
    "bad_words": wild(st.lists(st.text(max_size=4), max_size=2)),
    "truncate_prompt_tokens": wild(st.integers(-2, 300)),
    "include_stop_str_in_output": wild(st.booleans()),
    "skip_special_tokens": wild(st.booleans()),
    "spaces_between_special_tokens": wild(st.booleans()),
    "response_format": wild(
        st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "n", "schema": {"enum": [1, 2]}}},
                {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "x"}}},
            ]
        )
    ),
    "guided_json": wild(st.sampled_from([{"type": "boolean"}, '{"const": "a"}', "{bad"])),
    "guided_regex": wild(st.sampled_from(["[ab]{1,3}", "(", ""])),
    "guided_choice": wild(st.lists(st.text(max_size=3), max_size=3)),
    "guided_grammar": wild(st.sampled_from(['root ::= "x" | "y"', "root ::= ("])),
}
COMPLETION = {
    **SAMPLING,
    "prompt": wild(
        st.text(max_size=20)
        | st.lists(st.text(max_size=10), max_size=3)
        | st.lists(st.integers(-2, 400), max_size=8)
        | st.lists(st.lists(st.integers(-2, 400), max_size=4), max_size=2)
    ),
    "echo": wild(st.booleans()),
    "logprobs": wild(st.integers(-1, 25)),
    "suffix": wild(st.just("")),
    "use_beam_search": wild(st.booleans()),
    "length_penalty": wild(st.floats(-1, 2)),
    "early_stopping": wild(st.sampled_from([True, False, "never"])),
}
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"])},
    optional={"content": wild(st.text(max_size=12)), "name": st.text(max_size=4)},
)
CHAT = {
    **SAMPLING,
    "messages": wild(st.lists(MESSAGE, max_size=3)),
    "logprobs": wild(st.booleans()),
    "top_logprobs": wild(st.integers(-1, 25)),
    "max_completion_tokens": wild(st.integers(-1, 4)),
    "add_generation_prompt": wild(st.booleans()),
    "tools": wild(st.just([])),
    "tool_choice": wild(st.sampled_from(["none", "auto"])),
    "parallel_tool_calls": wild(st.booleans()),
}


def bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    names = sorted(fields)
    return st.builds(
        lambda chosen, values, max_tokens, extra: {
            **{name: value for name, value in zip(names, values, strict=True) if name in chosen},
            "max_tokens": max_tokens,
            **extra,
        },
        st.sets(st.sampled_from(names)),
        st.tuples(*(fields[name] for name in names)),
        st.integers(-2, 6) | st.sampled_from([None, "4", 1.5]),
        st.dictionaries(
            st.sampled_from(["bogus", "prompt_logprobs", "Model"]), ANY_JSON, max_size=1
        ),
    )


@pytest.mark.parametrize(
    ("model", "fields"), [(CompletionRequest, COMPLETION), (ChatCompletionRequest, CHAT)]
)
def test_every_request_field_is_fuzzed(model: type[BaseModel], fields: dict[str, Any]) -> None:
    # "max_tokens" is drawn for every body (small, to keep valid requests quick).
    assert set(model.model_fields) == {*fields, "max_tokens"}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, timeout=60) as client:
        yield client


def check(http: httpx2.Client, path: str, body: dict[str, Any]) -> None:
    # json.dumps, not the client's encoder: NaN and Infinity (which Python's JSON
    # parser accepts) must be sent too.
    content = json.dumps(body).encode()
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404), (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["code"] == response.status_code and error["message"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.endswith("data: [DONE]\n\n"), response.text
        assert '"error"' not in response.text or '"code":400' in response.text, response.text
    else:
        assert response.json()["choices"]


def fuzz(http: httpx2.Client, max_examples: int) -> None:
    """Send ``max_examples`` drawn completion bodies and as many chat bodies."""

    @settings(max_examples=max_examples)
    @given(completion=bodies(COMPLETION), chat=bodies(CHAT))
    def send(completion: dict[str, Any], chat: dict[str, Any]) -> None:
        check(http, "/v1/completions", completion)
        check(http, "/v1/chat/completions", chat)

    send()


@settings(max_examples=60)
@given(body=bodies(COMPLETION))
def test_fuzzed_completion_bodies_never_fail_the_server(
    http: httpx2.Client, body: dict[str, Any]
) -> None:
    check(http, "/v1/completions", body)


@settings(max_examples=60)
@given(body=bodies(CHAT))
def test_fuzzed_chat_bodies_never_fail_the_server(
    http: httpx2.Client, body: dict[str, Any]
) -> None:
    check(http, "/v1/chat/completions", body)


def test_engine_is_alive_after_fuzzing(http: httpx2.Client) -> None:
    # Fuzzes on its own, so that it holds whatever ran before it (or did not).
    fuzz(http, max_examples=20)
    assert http.get("/health").status_code == 200
    response = http.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2})
    assert response.status_code == 200
