"""The app in-process (ASGI) over a real engine on the tiny model: endpoints, errors, SSE."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from transformers import AutoTokenizer

from corral.engine import open_engine_from_core
from corral.entrypoints.errors import APIError
from corral.entrypoints.openai_server import build_app, make_context
from corral.sampling_params import SamplingParams
from corral.testing import FakeModelError, FakeModelRunner, make_fake_core, wait_idle
from tests.server.server_helpers import MAX_MODEL_LEN, SERVED_NAME, open_app

pytestmark = pytest.mark.anyio


def sse_events(text: str) -> list[Any]:
    """The events of an SSE body: parsed JSON, or the literal "[DONE]"."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def app_of(client: httpx2.AsyncClient) -> Any:
    """The ASGI app behind an in-process client, for tests that drive ASGI by hand."""
    transport = client._transport
    assert isinstance(transport, httpx2.ASGITransport)
    return transport.app


def http_scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("corral", 80),
    }  # fmt: skip


def assert_error(response: httpx2.Response, status: int, param: str | None, text: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert error["param"] == param
    assert text in error["message"]


async def test_models_health_and_version(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [SERVED_NAME]
        assert models["data"][0]["max_model_len"] == MAX_MODEL_LEN
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/version")).json()["version"]


async def test_completion_usage_counts_prompt_and_generated_tokens(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        tokens = (await client.post("/tokenize", json={"prompt": "Once upon"})).json()["tokens"]
        body = {"prompt": "Once upon", "max_tokens": 5, "n": 2, "seed": 1, "ignore_eos": True}
        response = await client.post("/v1/completions", json=body)
        result = response.json()
        assert response.status_code == 200, result
        assert [c["index"] for c in result["choices"]] == [0, 1]
        assert all(c["finish_reason"] == "length" for c in result["choices"])
        assert result["usage"] == {
            "prompt_tokens": len(tokens),
            "completion_tokens": 10,
            "total_tokens": len(tokens) + 10,
        }


async def test_several_prompts_get_consecutive_choice_indices(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        body = {
            "prompt": [[5, 6, 7], [8, 9]],
            "max_tokens": 3,
            "temperature": 0,
            "ignore_eos": True,
        }
        result = (await client.post("/v1/completions", json=body)).json()
        assert [c["index"] for c in result["choices"]] == [0, 1]
        assert result["usage"]["prompt_tokens"] == 5
        assert result["usage"]["completion_tokens"] == 6


async def test_stream_is_sse_chunks_ending_with_done(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        body = {
            "prompt": "Once upon",
            "max_tokens": 6,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await client.post("/v1/completions", json=body)
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        usage_chunk = events[-2]
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
        chunks = events[:-2]
        assert all(c["object"] == "text_completion" for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        whole = (
            await client.post(
                "/v1/completions", json={**body, "stream": False, "stream_options": None}
            )
        ).json()
        assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


async def test_prompt_plus_max_tokens_beyond_context_is_400(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        response = await client.post(
            "/v1/completions", json={"prompt": [5] * 200, "max_tokens": 100}
        )
        assert_error(response, 400, "max_tokens", f"maximum context length is {MAX_MODEL_LEN}")
        response = await client.post("/v1/completions", json={"prompt": [5] * (MAX_MODEL_LEN + 1)})
        assert_error(response, 400, "prompt", "maximum context length")


@pytest.mark.parametrize(
    ("path", "body", "param", "text"),
    [
        ("/v1/completions", {"prompt": "x", "top_p": 7}, "top_p", "top_p must be in (0, 1]"),
        ("/v1/completions", {"prompt": "x", "n": 0}, "n", "n must be at least 1"),
        (
            "/v1/completions",
            {"prompt": "x", "max_tokens": 0},
            "max_tokens",
            "only allowed with echo=true",
        ),
        ("/v1/completions", {"prompt": "x", "max_token": 3}, "max_token", "Extra inputs"),
        ("/v1/completions", {"prompt": [1, 99999]}, "prompt", "outside the vocabulary"),
        ("/v1/completions", {"prompt": "x", "temperature": 0, "n": 2}, "best_of", "greedy"),
        ("/v1/completions", {"max_tokens": 3}, "prompt", "Field required"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "robot", "content": "x"}]},
            "messages.0.role",
            "messages.0.role: Input should be",
        ),
        ("/v1/chat/completions", {"messages": []}, "messages", "at least 1"),
        ("/tokenize", {"prompt": "x", "messages": []}, "prompt", "exactly one"),
        ("/detokenize", {"tokens": [-1]}, "tokens.0", "greater than or equal to 0"),
    ],
)
async def test_invalid_parameter_is_400_naming_the_field(
    tiny_model: Path, path: str, body: dict[str, Any], param: str, text: str
) -> None:
    async with open_app(tiny_model) as (client, _):
        assert_error(await client.post(path, json=body), 400, param, text)


async def test_malformed_json_is_400(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        response = await client.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_error(response, 400, None, "JSON")


async def test_unknown_model_is_404(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        response = await client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
        assert_error(response, 404, "model", "'gpt-9' does not exist")


async def test_api_key_guards_v1_only(tiny_model: Path) -> None:
    async with open_app(tiny_model, api_key="sesame") as (client, _):
        assert_error(await client.get("/v1/models"), 401, None, "API key")
        wrong = {"authorization": "Bearer open"}
        assert_error(await client.get("/v1/models", headers=wrong), 401, None, "API key")
        right = {"authorization": "Bearer sesame"}
        assert (await client.get("/v1/models", headers=right)).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_body_over_the_limit_is_413(tiny_model: Path) -> None:
    async with open_app(tiny_model, max_body_size=1000) as (client, _):
        big = json.dumps({"prompt": "x" * 2000}).encode()
        assert_error(await client.post("/v1/completions", content=big), 413, None, "1000 bytes")

        # Chunked (no content-length): the limit applies to the bytes as they come.
        chunks = [big[start : start + 100] for start in range(0, len(big), 100)]
        messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app_of(client)(http_scope("POST", "/v1/completions"), receive, send)
        assert sent[0]["status"] == 413
        assert json.loads(sent[1]["body"])["error"]["code"] == 413
        assert len(messages) == len(chunks) - 11  # it stopped reading past the limit
        small = {"prompt": "x", "max_tokens": 1}
        assert (await client.post("/v1/completions", json=small)).status_code == 200


async def test_tokenize_and_detokenize_round_trip(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        tokens = (
            await client.post(
                "/tokenize", json={"prompt": "The quick fox", "add_special_tokens": False}
            )
        ).json()
        assert tokens["count"] == len(tokens["tokens"])
        text = (await client.post("/detokenize", json={"tokens": tokens["tokens"]})).json()[
            "prompt"
        ]
        assert text == "The quick fox"


async def test_chat_prompt_is_the_chat_template(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ]
        counted = (await client.post("/tokenize", json={"messages": messages})).json()["count"]
        body = {"messages": messages, "max_tokens": 3, "temperature": 0, "ignore_eos": True}
        result = (await client.post("/v1/chat/completions", json=body)).json()
        assert result["object"] == "chat.completion"
        assert result["choices"][0]["message"]["role"] == "assistant"
        assert result["usage"]["prompt_tokens"] == counted


async def test_client_disconnect_aborts_its_request(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, engine):
        app = app_of(client)
        body = json.dumps(
            {"prompt": "Once", "max_tokens": 200, "ignore_eos": True, "stream": True}
        ).encode()
        first_chunk = anyio.Event()
        sent: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first_chunk.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                first_chunk.set()

        scope = http_scope("POST", "/v1/completions")
        with anyio.fail_after(10):
            await app(scope, receive, send)
            # The request is aborted synchronously; its blocks are free after one step.
            await wait_idle(engine)
        stats = engine.stats()
        assert stats.num_running == 0 and stats.num_waiting == 0
        assert stats.num_generation_tokens < 200
        metrics = (await client.get("/metrics")).text
        assert (
            'corral:request_success_total{finished_reason="abort",model_name="tiny-llama"} 1.0'
            in metrics
        )


@asynccontextmanager
async def dying_app(model: Path, fail_at_step: int) -> AsyncIterator[httpx2.AsyncClient]:
    """The app over a fake model whose step ``fail_at_step`` raises (killing the engine)."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    runner = FakeModelRunner(
        block_size=4, num_kv_blocks=64, vocab_size=len(tokenizer), fail_at_step=fail_at_step
    )
    config = types.SimpleNamespace(vocab_size=len(tokenizer), max_model_len=128)
    # Leaving a dead engine's block re-raises the step's error in place of whatever
    # the block raised, so a failing assertion is kept aside and re-raised after.
    failure: BaseException | None = None
    with pytest.raises(FakeModelError):
        async with open_engine_from_core(
            make_fake_core(runner),
            tokenizer=tokenizer,
            model_config=config,
            log_requests=False,
            log_stats=False,
        ) as engine:
            ctx = await make_context(engine, model_path="fake")
            transport = httpx2.ASGITransport(app=build_app(ctx))
            async with httpx2.AsyncClient(transport=transport, base_url="http://corral") as client:
                try:
                    yield client
                except BaseException as exc:
                    failure = exc
                    raise
    if failure is not None:
        raise failure


async def test_engine_death_answers_503(tiny_model: Path) -> None:
    async with dying_app(tiny_model, fail_at_step=1) as client:
        body = {"prompt": [5, 6], "max_tokens": 2}
        assert_error(await client.post("/v1/completions", json=body), 503, None, "engine")
        assert (await client.get("/health")).status_code == 503
        assert_error(await client.post("/v1/completions", json=body), 503, None, "engine")
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        assert_error(await client.post("/v1/chat/completions", json=chat), 503, None, "engine")


async def test_engine_death_mid_stream_ends_it_with_an_error_event(tiny_model: Path) -> None:
    async with dying_app(tiny_model, fail_at_step=3) as client:
        body = {"prompt": [5, 6], "max_tokens": 10, "ignore_eos": True, "stream": True}
        response = await client.post("/v1/completions", json=body)
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == 503
        assert any("choices" in event for event in events[:-2])


async def test_echo_with_logprobs_prepends_the_prompt(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        prompt_ids = (await client.post("/tokenize", json={"prompt": "Once upon"})).json()["tokens"]
        body = {
            "prompt": "Once upon",
            "max_tokens": 3,
            "temperature": 0,
            "echo": True,
            "logprobs": 1,
        }
        choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
        assert choice["text"].startswith("Once upon")
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(prompt_ids) + 3
        assert logprobs["token_logprobs"][0] is None
        assert all(lp is not None for lp in logprobs["token_logprobs"][1:])
        assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


async def test_best_of_returns_the_n_best_samples(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        body = {
            "prompt": "Once",
            "max_tokens": 4,
            "n": 2,
            "best_of": 4,
            "seed": 5,
            "ignore_eos": True,
        }
        result = (await client.post("/v1/completions", json=body)).json()
        assert [c["index"] for c in result["choices"]] == [0, 1]
        assert result["usage"]["completion_tokens"] == 8
        streamed = await client.post("/v1/completions", json={**body, "stream": True})
        assert_error(streamed, 400, "best_of", "streaming needs best_of equal to n")


async def test_engine_refusal_is_400_before_the_stream_starts(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, engine):
        messages = [{"role": "user", "content": "hi"}]
        body = {"messages": messages, "n": 1000, "max_tokens": 2, "stream": True}
        response = await client.post("/v1/chat/completions", json=body)
        assert_error(response, 400, "best_of", "exceeds max_num_seqs")
        assert engine.stats().num_running == 0


async def test_submit_all_aborts_the_submitted_when_one_is_refused(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (_, engine):
        ctx = await make_context(engine, model_path=str(tiny_model))
        params = SamplingParams(max_tokens=50, ignore_eos=True)
        duplicate = [("same-id", [5, 6], params, None), ("same-id", [7, 8], params, None)]
        with pytest.raises(APIError, match="already in use"):
            ctx.submit_all(duplicate)
        # The first one was aborted: its id is free again, before any await.
        ctx.submit("same-id", [5, 6], params).close()
        with anyio.fail_after(10):
            await wait_idle(engine)
        assert engine.stats().num_generation_tokens < 50
