"""Response bodies of the OpenAI-compatible API, as pydantic models.

Shapes follow OpenAI's API (what the official ``openai`` client parses) with vLLM's
additions (``stop_reason``). ``finish_reason`` is "stop" or "length", or "abort"
for a choice the server gave up on (e.g. at shutdown), as in vLLM.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field


def random_id(prefix: str) -> str:
    """A fresh response id such as ``cmpl-…`` or ``chatcmpl-…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    """Token counts: the prompt's, and the generated tokens of every returned choice."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    """The legacy completions logprobs layout: parallel lists, one entry per token."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    """One choice of a completion (or its new part, in a stream chunk)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    """A whole completion; also the shape of each stream chunk (without ``usage``,
    except in the final usage chunk, whose ``choices`` is empty)."""

    id: str = Field(default_factory=lambda: random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(BaseModel):
    """A token and its log-probability; ``bytes`` is the token's UTF-8 encoding."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """The chosen token, with the ``top_logprobs`` alternatives asked for (most likely first)."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """Per generated token, its `TokenLogprob`."""

    content: list[TokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    """The function a tool call calls; ``arguments`` is JSON text."""

    name: str
    arguments: str


class ToolCallOut(BaseModel):
    """A tool call of the assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    """The assistant message of a chat choice (``tool_calls`` only when it made calls)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=lambda v: v is None)


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    """A whole chat completion."""

    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None


class DeltaFunctionCall(BaseModel):
    """A part of a streamed call: the name comes once, the arguments text in pieces."""

    name: str | None = Field(default=None, exclude_if=lambda v: v is None)
    arguments: str = ""


class DeltaToolCall(BaseModel):
    """A part of tool call ``index``; its first part carries ``id``, ``type`` and the name."""

    index: int
    id: str | None = Field(default=None, exclude_if=lambda v: v is None)
    type: Literal["function"] | None = Field(default=None, exclude_if=lambda v: v is None)
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    """What a stream chunk adds to a chat choice: the role once, then text or tool calls."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = Field(default=None, exclude_if=lambda v: v is None)


class ChatChunkChoice(BaseModel):
    """One choice's part of a chat stream chunk."""

    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    """One chat stream event; the final usage chunk has no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    """A served model name in ``/v1/models``; ``root`` is the model (or adapter) path,
    ``parent`` the base model an adapter applies to."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "corral"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    """The body of ``/v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    """The body of ``/tokenize``."""

    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    """The body of ``/detokenize``."""

    prompt: str


class ErrorInfo(BaseModel):
    """What went wrong: ``type`` names the HTTP status class, ``param`` the field at fault."""

    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo
