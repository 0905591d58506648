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
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from corral.engine import RequestStream
from corral.entrypoints.assembly import stream_or_error
from corral.entrypoints.errors import APIError, bad_request
from corral.entrypoints.serving import ServingContext, unless_disconnected
from corral.entrypoints.sse import Emit, ProducerResponse
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


class NullDelimitedResponse(ProducerResponse):
    """JSON objects each followed by ``\\0`` (see `ProducerResponse`)."""

    headers_of_body = ((b"content-type", b"application/octet-stream"),)

    def frame(self, data: Any) -> bytes:
        return (json.dumps(data) + "\0").encode()


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
