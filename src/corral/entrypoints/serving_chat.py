"""``POST /v1/chat/completions``: the tokenizer's chat template, then one engine request.

The prompt is ``tokenizer.apply_chat_template(messages, add_generation_prompt=...)``
tokenized without adding special tokens again (the template places them). A
streamed choice starts with a chunk carrying ``role: "assistant"``, then sends
only new text; its last chunk carries the finish reason.

With ``tools``, the template is given them, and the answer is read for tool calls:
by the server's parser under ``tool_choice: "auto"``, as the array of calls or the
one function's arguments that a "required" or named choice generated under a JSON
schema (see `corral.entrypoints.tool_parsers`). A stream then sends content and
tool-call deltas as the reader hands them out.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import jinja2
from starlette.responses import JSONResponse, Response

from corral.engine import RequestStream
from corral.entrypoints.assembly import ChoiceTracker, json_logprob, stream_or_error, usage_of
from corral.entrypoints.errors import APIError, bad_request
from corral.entrypoints.protocol import ChatCompletionRequest, ChatMessage, ChatTool
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
from corral.entrypoints.serving_tools import (
    ToolReading,
    tool_calls_out,
    tool_chunks,
    tool_constraint,
    tool_reading,
)
from corral.entrypoints.sse import Emit, EventStreamResponse
from corral.outputs import Logprobs, RequestOutput
from corral.sampling_params import SamplingParams


def _template_message(index: int, message: ChatMessage) -> dict[str, Any]:
    # Few templates know OpenAI's newer "developer" role; it means "system".
    role = "system" if message.role == "developer" else message.role
    item: dict[str, Any] = {"role": role, "content": message.text()}
    if message.tool_calls:
        calls = []
        for j, call in enumerate(message.tool_calls):
            try:
                # Templates write the arguments themselves (e.g. `| tojson`), as an object.
                arguments = json.loads(call.function.arguments)
            except ValueError as exc:
                field = f"messages.{index}.tool_calls.{j}.function.arguments"
                raise APIError(400, f"{field}: not valid JSON ({exc})", field) from exc
            function = {"name": call.function.name, "arguments": arguments}
            calls.append({"id": call.id, "type": "function", "function": function})
        item["tool_calls"] = calls
    if message.tool_call_id is not None:
        item["tool_call_id"] = message.tool_call_id
    return item


def render_chat(
    ctx: ServingContext,
    messages: list[ChatMessage],
    add_generation_prompt: bool,
    tools: list[ChatTool] | None = None,
) -> str:
    """The conversation as the model's chat template writes it, with ``tools`` offered
    to the template when given (400 "messages" on failure)."""
    if not getattr(ctx.tokenizer, "chat_template", None):
        raise APIError(400, "messages: the model's tokenizer has no chat template", "messages")
    conversation = [_template_message(i, m) for i, m in enumerate(messages)]
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [tool.model_dump(exclude_none=True) for tool in tools]
    try:
        text = ctx.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
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
                logprob=json_logprob(entry[token_id]),
                bytes=list(token.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=ctx.token_text(t),
                        logprob=json_logprob(lp),
                        bytes=list(ctx.token_text(t).encode()),
                    )
                    for t, lp in top
                ],
            )
        )
    return ChatLogprobs(content=content)


def _prepare(
    ctx: ServingContext, request: ChatCompletionRequest
) -> tuple[str, list[int], SamplingParams]:
    text = render_chat(ctx, request.messages, request.add_generation_prompt, request.tools)
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
    constraint = tool_constraint(request)
    if constraint is not None:
        params = attrs.evolve(params, structured_outputs=constraint)
    return text, token_ids, params


async def create_chat_completion(
    ctx: ServingContext, request: ChatCompletionRequest, receive: Any
) -> Response:
    """Answer a chat completion request (see the module docstring)."""
    model = ctx.begin(request)
    tools = tool_reading(ctx, request)
    text, token_ids, params = _prepare(ctx, request)
    if tools is not None and tools.parser is not None:
        params = tools.parser.adjust_params(params)
    field = "tools" if request.forced_tool_choice else request.structured_field
    params = await ctx.compile_structured_outputs(params, field)
    request_id = random_id("chatcmpl")
    created = int(time.time())
    stream = ctx.submit(request_id, token_ids, params, prompt=text, model=model)
    if request.stream:
        return EventStreamResponse(
            lambda emit: _stream(ctx, request, tools, stream, request_id, created, model, emit),
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
        message = ChatMessageOut(content=completion.text)
        finish_reason: str | None = completion.finish_reason
        if tools is not None:
            extracted = tools.extract(completion.text)
            message = ChatMessageOut(
                content=extracted.content, tool_calls=tool_calls_out(extracted)
            )
            finish_reason = tools.finish_reason(len(extracted.tool_calls), finish_reason)
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                logprobs=logprobs,
                finish_reason=finish_reason,
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
    tools: ToolReading | None,
    stream: RequestStream,
    request_id: str,
    created: int,
    model: str,
    emit: Emit,
) -> None:
    tracker = ChoiceTracker(request.n)
    readers = [tools.stream() for _ in range(request.n)] if tools is not None else []

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
            if tools is None:
                choice = ChatChunkChoice(
                    index=delta.index,
                    delta=DeltaMessage(content=delta.text),
                    logprobs=logprobs,
                    finish_reason=delta.finish_reason,
                    stop_reason=delta.stop_reason,
                )
                await emit(chunk([choice]))
                continue
            reader = readers[delta.index]
            finished = delta.finish_reason is not None
            messages = tool_chunks(reader, delta.text, finished)
            if not messages and (finished or logprobs is not None):
                messages = [DeltaMessage()]
            for k, message in enumerate(messages):
                last = k == len(messages) - 1
                reason = tools.finish_reason(reader.num_calls, delta.finish_reason)
                choice = ChatChunkChoice(
                    index=delta.index,
                    delta=message,
                    logprobs=logprobs if k == 0 else None,
                    finish_reason=reason if last else None,
                    stop_reason=delta.stop_reason if last else None,
                )
                await emit(chunk([choice]))

    finals: list[RequestOutput] = []

    async def work() -> None:
        finals.append(await ctx.consume(stream, on_output))

    if await stream_or_error(emit, work) and request.include_usage:
        await emit(chunk([], usage_of(finals)))
