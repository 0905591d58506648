"""``POST /v1/chat/completions``: the tokenizer's chat template, then one engine request.

The prompt is ``tokenizer.apply_chat_template(messages, add_generation_prompt=...)``
tokenized without adding special tokens again (the template places them). A
streamed choice starts with a chunk carrying ``role: "assistant"``, then sends
only new text; its last chunk carries the finish reason.
"""

from __future__ import annotations

import time
from typing import Any

import jinja2
from starlette.responses import JSONResponse, Response

from corral.engine import RequestStream
from corral.entrypoints.assembly import ChoiceTracker, stream_or_error, usage_of
from corral.entrypoints.errors import APIError, bad_request
from corral.entrypoints.protocol import ChatCompletionRequest, ChatMessage
from corral.entrypoints.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
    random_id,
)
from corral.entrypoints.serving import ServingContext, unless_disconnected
from corral.entrypoints.sse import Emit, EventStreamResponse
from corral.outputs import Logprobs, RequestOutput
from corral.sampling_params import SamplingParams


def render_chat(
    ctx: ServingContext, messages: list[ChatMessage], add_generation_prompt: bool
) -> str:
    """The conversation as the model's chat template writes it (400 "messages" on failure)."""
    if not getattr(ctx.tokenizer, "chat_template", None):
        raise APIError(400, "messages: the model's tokenizer has no chat template", "messages")
    conversation = [
        # Few templates know OpenAI's newer "developer" role; it means "system".
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]
    try:
        text = ctx.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        # Templates reject conversations they do not support (jinja's raise_exception).
        raise APIError(
            400, f"messages: the chat template rejected them: {exc}", "messages"
        ) from exc
    return str(text)


def _logprobs(
    ctx: ServingContext, token_ids: list[int], entries: list[Logprobs], num: int
) -> ChatLogprobs:
    content = []
    for token_id, entry in zip(token_ids, entries, strict=True):
        token = ctx.token_text(token_id)
        top = sorted(entry.items(), key=lambda item: item[1], reverse=True)[:num]
        content.append(
            TokenLogprob(
                token=token,
                logprob=entry[token_id],
                bytes=list(token.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=ctx.token_text(t), logprob=lp, bytes=list(ctx.token_text(t).encode())
                    )
                    for t, lp in top
                ],
            )
        )
    return ChatLogprobs(content=content)


def _prepare(
    ctx: ServingContext, request: ChatCompletionRequest
) -> tuple[str, list[int], SamplingParams]:
    text = render_chat(ctx, request.messages, request.add_generation_prompt)
    token_ids = ctx.encode(text, add_special_tokens=False)
    try:
        token_ids = request.truncate(token_ids, ctx.max_model_len)
    except ValueError as exc:
        raise bad_request(exc) from exc
    max_tokens = ctx.max_tokens(request.requested_max_tokens, len(token_ids))
    try:
        params = request.sampling_params(
            max_tokens=max_tokens, default_temperature=1.0, logprobs=request.num_logprobs
        )
    except ValueError as exc:
        raise bad_request(exc) from exc
    return text, token_ids, params


async def create_chat_completion(
    ctx: ServingContext, request: ChatCompletionRequest, receive: Any
) -> Response:
    """Answer a chat completion request (see the module docstring)."""
    model = ctx.begin(request)
    text, token_ids, params = _prepare(ctx, request)
    params = await ctx.compile_structured_outputs(params, request.structured_field)
    request_id = random_id("chatcmpl")
    created = int(time.time())
    stream = ctx.submit(request_id, token_ids, params, prompt=text)
    if request.stream:
        return EventStreamResponse(
            lambda emit: _stream(ctx, request, stream, request_id, created, model, emit),
            stream.close,
        )
    try:
        final = await unless_disconnected(receive, lambda: ctx.consume(stream))
    finally:
        stream.close()
    if final is None:
        return Response(status_code=499)  # the client left; nobody reads this
    choices = []
    for i, completion in enumerate(final.outputs):
        logprobs = None
        if request.logprobs:
            entries = list(completion.logprobs or [])
            logprobs = _logprobs(ctx, completion.token_ids, entries, request.top_logprobs or 0)
        choices.append(
            ChatChoice(
                index=i,
                message=ChatMessageOut(content=completion.text),
                logprobs=logprobs,
                finish_reason=completion.finish_reason,
                stop_reason=completion.stop_reason,
            )
        )
    body = ChatCompletionResponse(
        id=request_id, created=created, model=model, choices=choices, usage=usage_of([final])
    )
    return JSONResponse(body.model_dump())


async def _stream(
    ctx: ServingContext,
    request: ChatCompletionRequest,
    stream: RequestStream,
    request_id: str,
    created: int,
    model: str,
    emit: Emit,
) -> None:
    tracker = ChoiceTracker(request.n)

    def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> dict[str, Any]:
        body = ChatCompletionChunk(
            id=request_id, created=created, model=model, choices=choices, usage=usage
        )
        return body.model_dump(exclude={"usage"} if usage is None else None)

    for i in range(request.n):
        await emit(
            chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
        )

    async def on_output(output: RequestOutput) -> None:
        for delta in tracker.deltas(output):
            logprobs = None
            if request.logprobs:
                logprobs = _logprobs(
                    ctx, delta.token_ids, delta.logprobs, request.top_logprobs or 0
                )
            choice = ChatChunkChoice(
                index=delta.index,
                delta=DeltaMessage(content=delta.text),
                logprobs=logprobs,
                finish_reason=delta.finish_reason,
                stop_reason=delta.stop_reason,
            )
            await emit(chunk([choice]))

    finals: list[RequestOutput] = []

    async def work() -> None:
        finals.append(await ctx.consume(stream, on_output))

    if await stream_or_error(emit, work) and request.include_usage:
        await emit(chunk([], usage_of(finals)))
