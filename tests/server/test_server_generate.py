"""vLLM's simple ``POST /generate``, in-process over a real engine on the tiny model."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from corral.sampling_params import SamplingParams
from corral.testing import wait_idle
from tests.server.server_helpers import open_app

pytestmark = pytest.mark.anyio

PROMPT = "Once upon a time"


def chunks(body: bytes) -> list[Any]:
    parts = body.split(b"\0")
    assert parts[-1] == b""  # every chunk ends with a null byte
    return [json.loads(part) for part in parts[:-1]]


async def test_generate_returns_prompt_plus_output_as_the_engine_makes_it(
    tiny_model: Path,
) -> None:
    body = {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    async with open_app(tiny_model) as (client, engine):
        response = await client.post("/generate", json=body)
        assert response.status_code == 200, response.text
        params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
        final = [out async for out in engine.generate(PROMPT, params)][-1]
        assert response.json() == {"text": [PROMPT + final.outputs[0].text]}
        sampled = {"prompt": PROMPT, "n": 2, "seed": 3, "max_tokens": 4}
        texts = (await client.post("/generate", json=sampled)).json()["text"]
        assert len(texts) == 2 and all(t.startswith(PROMPT) for t in texts)


async def test_generate_streams_null_delimited_cumulative_chunks(tiny_model: Path) -> None:
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    async with open_app(tiny_model) as (client, _):
        whole = (await client.post("/generate", json=body)).json()
        response = await client.post("/generate", json={**body, "stream": True})
        assert response.status_code == 200
        events = chunks(response.content)
    assert 1 <= len(events) <= 6
    assert events[-1] == whole
    texts = [e["text"][0] for e in events]
    assert all(t.startswith(PROMPT) for t in texts)
    assert all(later.startswith(earlier) for earlier, later in pairwise(texts))


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"max_tokens": 2}, "prompt", "prompt: required"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "x", "top_p": 2.0}, "top_p", "top_p must be in (0, 1]"),
        ({"prompt": "x", "no_such_field": 1}, None, "no_such_field"),
        ({"prompt": "x", "stream": "yes"}, "stream", "boolean"),
        ({"prompt": "x", "output_kind": 1}, "output_kind", "cannot be set"),
        ({"prompt": "x", "logits_processors": []}, "logits_processors", "cannot be set"),
    ],
)
async def test_generate_refuses_bad_bodies_with_400(
    tiny_model: Path, body: dict[str, Any], param: str | None, text: str
) -> None:
    async with open_app(tiny_model) as (client, _):
        response = await client.post("/generate", json=body)
        invalid = await client.post(
            "/generate", content=b"{", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and text in error["message"]
    assert invalid.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
async def test_generate_client_disconnect_aborts_its_request(
    tiny_model: Path, stream: bool
) -> None:
    async with open_app(tiny_model) as (client, engine):
        transport = client._transport
        assert isinstance(transport, httpx2.ASGITransport)
        app = transport.app
        body = json.dumps(
            {"prompt": "Once", "max_tokens": 200, "ignore_eos": True, "stream": stream}
        ).encode()
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Leave once the engine has produced a few tokens.
            while engine.stats().num_generation_tokens < 3:
                await engine.next_stats()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/generate", "raw_path": b"/generate",
            "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("corral", 80),
        }  # fmt: skip
        with anyio.fail_after(20):
            await app(scope, receive, send)
            await wait_idle(engine)
        stats = engine.stats()
        assert stats.num_running == 0 and stats.num_waiting == 0
        assert stats.num_generation_tokens < 200
