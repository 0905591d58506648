"""``POST /v1/completions``: one engine request per prompt, answered whole or as SSE chunks.

Choice ``i`` of prompt ``p`` has index ``p * n + i``. With ``echo`` the prompt text
precedes each choice's text (and, with ``logprobs``, the prompt tokens' logprobs
precede the generated ones; the first prompt token has none). A streamed choice
sends only what is new since its previous chunk, so the concatenated chunks equal
the non-streamed text.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import attrs
from starlette.responses import JSONResponse, Response

from corral.engine import RequestStream
from corral.entrypoints.assembly import ChoiceTracker, json_logprob, stream_or_error, usage_of
from corral.entrypoints.errors import APIError, bad_request
from corral.entrypoints.protocol import CompletionRequest
from corral.entrypoints.responses import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    random_id,
)
from corral.entrypoints.serving import ServingContext, run_all, unless_disconnected
from corral.entrypoints.sse import Emit, EventStreamResponse
from corral.outputs import CompletionOutput, Logprobs, RequestOutput
from corral.sampling_params import SamplingParams


@attrs.define
class _Prompt:
    text: str
    token_ids: list[int]
    params: SamplingParams


@attrs.define
class _LogprobWriter:
    """Builds the legacy logprobs lists of one choice, chunk by chunk."""

    ctx: ServingContext
    num: int
    offset: int = 0

    def write(self, token_ids: list[int], entries: Sequence[Logprobs | None]) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for token_id, entry in zip(token_ids, entries, strict=True):
            token = self.ctx.token_text(token_id)
            out.tokens.append(token)
            out.text_offset.append(self.offset)
            self.offset += len(token)
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            chosen_lp = entry.get(token_id)
            out.token_logprobs.append(None if chosen_lp is None else json_logprob(chosen_lp))
            top = sorted(entry.items(), key=lambda item: item[1], reverse=True)
            chosen = [item for item in top if item[0] == token_id]
            shown: dict[str, float] = {}
            for t, lp in top[: self.num] + chosen:
                # Distinct tokens may share a text (partial UTF-8 bytes all show as "�");
                # the more likely one keeps the entry.
                shown.setdefault(self.ctx.token_text(t), json_logprob(lp))
            out.top_logprobs.append(shown)
        return out


def _prepare(ctx: ServingContext, request: CompletionRequest) -> list[_Prompt]:
    prompts = []
    prompt_logprobs = request.logprobs if request.echo else None
    if request.scoring_only and prompt_logprobs is None:
        # The engine scores a prompt only when asked for its logprobs; none are shown.
        prompt_logprobs = 0
    for prompt in request.prompts():
        encoded = ctx.encode(prompt)
        try:
            token_ids = request.truncate(encoded, ctx.max_model_len)
            if isinstance(prompt, str) and len(token_ids) == len(encoded):
                text = prompt
            else:
                text = ctx.tokenizer.decode(token_ids)
            if request.scoring_only:
                # Nothing is generated, so the whole context may hold the prompt.
                max_tokens = 0
                if len(token_ids) > ctx.max_model_len:
                    raise APIError(
                        400,
                        f"prompt: {len(token_ids)} tokens are more than this model's maximum "
                        f"context length of {ctx.max_model_len} tokens",
                        "prompt",
                    )
            else:
                max_tokens = ctx.max_tokens(request.max_tokens, len(token_ids))
            params = request.sampling_params(
                max_tokens=max_tokens,
                default_temperature=1.0,
                logprobs=request.logprobs,
                prompt_logprobs=prompt_logprobs,
                beam=request.beam_fields(),
            )
        except ValueError as exc:
            raise bad_request(exc) from exc
        prompts.append(_Prompt(text, token_ids, params))
    return prompts


def _prompt_logprobs(writer: _LogprobWriter, output: RequestOutput) -> CompletionLogprobs:
    entries = output.prompt_logprobs or [None] * len(output.prompt_token_ids)
    return writer.write(output.prompt_token_ids, list(entries))


def _merge(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        text_offset=first.text_offset + second.text_offset,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        tokens=first.tokens + second.tokens,
        top_logprobs=first.top_logprobs + second.top_logprobs,
    )


def _choice(
    ctx: ServingContext,
    request: CompletionRequest,
    index: int,
    prompt: _Prompt,
    output: RequestOutput,
    completion: CompletionOutput,
) -> CompletionChoice:
    text = completion.text
    logprobs = None
    if request.logprobs is not None:
        writer = _LogprobWriter(ctx, request.logprobs)
        logprobs = CompletionLogprobs()
        if request.echo:
            logprobs = _prompt_logprobs(writer, output)
        generated = writer.write(completion.token_ids, list(completion.logprobs or []))
        logprobs = _merge(logprobs, generated)
    if request.echo:
        text = prompt.text + text
    return CompletionChoice(
        index=index,
        text=text,
        logprobs=logprobs,
        finish_reason=completion.finish_reason,
        stop_reason=completion.stop_reason,
    )


async def create_completion(
    ctx: ServingContext, request: CompletionRequest, receive: Any
) -> Response:
    """Answer a completion request (see the module docstring)."""
    model = ctx.begin(request)
    prompts = _prepare(ctx, request)
    if prompts and prompts[0].params.structured_outputs is not None:
        # Every prompt shares the request's constraint: compile it once.
        first = await ctx.compile_structured_outputs(prompts[0].params, request.structured_field)
        compiled = first.structured_outputs
        for q in prompts:
            q.params = attrs.evolve(q.params, structured_outputs=compiled)
    request_id = random_id("cmpl")
    created = int(time.time())
    streams = ctx.submit_all(
        [(f"{request_id}-{p}", q.token_ids, q.params, q.text) for p, q in enumerate(prompts)],
        model=model,
    )

    def close_all() -> None:
        for stream in streams:
            stream.close()

    if request.stream:
        return EventStreamResponse(
            lambda emit: _stream(ctx, request, prompts, streams, request_id, created, model, emit),
            close_all,
        )
    finals: list[RequestOutput | None] = [None] * len(prompts)

    def job(p: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            finals[p] = await ctx.consume(streams[p])

        return run

    try:
        await unless_disconnected(receive, lambda: run_all([job(p) for p in range(len(prompts))]))
    finally:
        close_all()
    if None in finals:
        return Response(status_code=499)  # the client left; nobody reads this
    done = [final for final in finals if final is not None]
    choices = []
    for p, (prompt, output) in enumerate(zip(prompts, done, strict=True)):
        for i, completion in enumerate(output.outputs):
            choices.append(_choice(ctx, request, p * request.n + i, prompt, output, completion))
    body = CompletionResponse(
        id=request_id, created=created, model=model, choices=choices, usage=usage_of(done)
    )
    return JSONResponse(body.model_dump())


async def _stream(
    ctx: ServingContext,
    request: CompletionRequest,
    prompts: list[_Prompt],
    streams: list[RequestStream],
    request_id: str,
    created: int,
    model: str,
    emit: Emit,
) -> None:
    finals: list[RequestOutput] = []

    def chunk(choice: CompletionChoice) -> dict[str, Any]:
        body = CompletionResponse(id=request_id, created=created, model=model, choices=[choice])
        return body.model_dump(exclude={"usage"})

    async def run(p: int, prompt: _Prompt) -> None:
        n = request.n
        tracker = ChoiceTracker(n)
        writers = [_LogprobWriter(ctx, request.logprobs or 0) for _ in range(n)]

        async def on_output(output: RequestOutput) -> None:
            for delta in tracker.deltas(output):
                text = delta.text
                logprobs = None
                if request.logprobs is not None:
                    writer = writers[delta.index]
                    logprobs = writer.write(delta.token_ids, delta.logprobs)
                    if request.echo and delta.first:
                        logprobs = _merge(_prompt_logprobs(writer, output), logprobs)
                if request.echo and delta.first:
                    text = prompt.text + text
                choice = CompletionChoice(
                    index=p * n + delta.index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=delta.finish_reason,
                    stop_reason=delta.stop_reason,
                )
                await emit(chunk(choice))

        finals.append(await ctx.consume(streams[p], on_output))

    async def work() -> None:
        await run_all([partial(run, p, prompt) for p, prompt in enumerate(prompts)])

    if await stream_or_error(emit, work) and request.include_usage:
        body = CompletionResponse(
            id=request_id, created=created, model=model, choices=[], usage=usage_of(finals)
        )
        await emit(body.model_dump())
