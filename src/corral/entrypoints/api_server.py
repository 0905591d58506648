"""vLLM's simple demo API, ``POST /generate`` (vLLM's ``entrypoints/api_server.py``).

The body is ``{"prompt": str, "stream": bool, ...SamplingParams fields}``. Without
``stream`` the answer is ``{"text": [prompt + output, ...]}`` (one entry per
completion); with it, one such JSON object per engine output (cumulative, as
vLLM's), each followed by a null byte. A client that disconnects aborts its
request, streaming or not. Served by `corral serve` next to the OpenAI routes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from corral.engine import RequestStream
from corral.entrypoints.assembly import stream_or_error
from corral.entrypoints.errors import APIError, bad_request
from corral.entrypoints.serving import ServingContext, unless_disconnected
from corral.entrypoints.sse import Emit, wait_disconnect
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams

# SamplingParams fields a JSON body cannot set: callables and the stream's shape,
# which this endpoint fixes.
_NOT_FROM_JSON = frozenset({"logits_processors", "output_kind"})


def texts_of(output: RequestOutput) -> dict[str, list[str]]:
    """vLLM's answer body: the prompt followed by each completion's text."""
    prompt = output.prompt or ""
    return {"text": [prompt + completion.text for completion in output.outputs]}


def parse_body(body: Any) -> tuple[str, bool, SamplingParams]:
    """``(prompt, stream, params)`` of a /generate body; `APIError` 400 when invalid."""
    if not isinstance(body, dict):
        raise APIError(400, "body: must be a JSON object")
    fields = dict(body)
    prompt = fields.pop("prompt", None)
    if not isinstance(prompt, str):
        raise APIError(400, "prompt: required, a string", "prompt")
    stream = fields.pop("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, f"stream: must be a boolean, got {stream!r}", "stream")
    refused = sorted(_NOT_FROM_JSON & fields.keys())
    if refused:
        raise APIError(400, f"{refused[0]}: cannot be set in a request body", refused[0])
    try:
        params = SamplingParams(**fields)
    except TypeError as exc:
        # Unknown fields and values of the wrong type (e.g. "n": "two").
        raise APIError(400, f"body: invalid sampling parameters: {exc}") from exc
    except ValueError as exc:
        raise bad_request(exc) from exc
    return prompt, stream, params


class NullDelimitedResponse(Response):
    """A streamed body of JSON objects each followed by ``\\0``; the producer is
    cancelled when the client disconnects, and ``cleanup`` always runs (it ends the
    engine stream, which aborts the request)."""

    def __init__(self, producer: Callable[[Emit], Any], cleanup: Callable[[], None]) -> None:
        # Not Response.__init__: it would declare a content-length.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"application/octet-stream")]
        self._producer = producer
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(receive, send)
        finally:
            self._cleanup()

    async def _respond(self, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )

        async def emit(data: Any) -> None:
            chunk = (json.dumps(data) + "\0").encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        disconnected = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await wait_disconnect(receive)
                disconnected.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self._producer(emit)
            tg.cancel_scope.cancel()
        if not disconnected.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def generate(ctx: ServingContext, body: Any, receive: Receive) -> Response:
    """Answer one /generate request (see the module docstring)."""
    prompt, stream, params = parse_body(body)
    ctx.check_alive()
    token_ids = ctx.encode(prompt)
    request_id = uuid.uuid4().hex
    engine_stream: RequestStream = ctx.submit(request_id, token_ids, params, prompt=prompt)
    if stream:

        async def produce(emit: Emit) -> None:
            async def on_output(output: RequestOutput) -> None:
                await emit(texts_of(output))

            async def work() -> None:
                await ctx.consume(engine_stream, on_output)

            await stream_or_error(emit, work)

        return NullDelimitedResponse(produce, engine_stream.close)
    try:
        final = await unless_disconnected(receive, lambda: ctx.consume(engine_stream))
    finally:
        engine_stream.close()
    if final is None:
        return Response(status_code=499)  # the client left; nobody reads this
    return JSONResponse(texts_of(final))


def add_generate_route(app: FastAPI, ctx: ServingContext) -> None:
    """Register ``POST /generate`` on ``app`` (one line in the OpenAI app factory)."""

    @app.post("/generate")
    async def generate_route(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError as exc:
            raise APIError(400, f"body: invalid JSON ({exc})") from exc
        return await generate(ctx, body, request.receive)
