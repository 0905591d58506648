"""Tool calling on chat completions: how a request's ``tool_choice`` reads the answer.

"auto" reads free text with the server's parser; "required" and a named choice
generate under a JSON schema (`tool_constraint`) and read that. A stream turns each
text delta into chunks of content and of tool-call parts (`tool_chunks`).
"""

from __future__ import annotations

from typing import Literal

import attrs

from corral.entrypoints.errors import APIError
from corral.entrypoints.protocol import ChatCompletionRequest, NamedToolChoice
from corral.entrypoints.responses import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    ToolCallOut,
)
from corral.entrypoints.serving import ServingContext
from corral.entrypoints.tool_parsers import ExtractedToolCalls, ToolCallStream, ToolParser
from corral.entrypoints.tool_parsers.forced import (
    NamedCallStream,
    RequiredCallsStream,
    extract_named,
    extract_required,
    required_schema,
)
from corral.structured_outputs import StructuredOutputsParams


@attrs.frozen
class ToolReading:
    """How a request's answer is read for tool calls: by the server's parser ("auto"),
    as a forced array of calls ("required"), or as the arguments of one function."""

    choice: Literal["auto", "required", "named"]
    parser: ToolParser | None = None
    name: str = ""

    def extract(self, text: str) -> ExtractedToolCalls:
        """The content and calls of a whole answer."""
        if self.choice == "auto":
            assert self.parser is not None
            return self.parser.extract(text)
        if self.choice == "required":
            return extract_required(text)
        return extract_named(self.name, text)

    def stream(self) -> ToolCallStream:
        """A reader for one streamed choice."""
        if self.choice == "auto":
            assert self.parser is not None
            return self.parser.stream()
        if self.choice == "required":
            return RequiredCallsStream()
        return NamedCallStream(self.name)

    def finish_reason(self, num_calls: int, reason: str | None) -> str | None:
        """The ``finish_reason`` of a choice that made ``num_calls`` calls."""
        # OpenAI ends a forced named call with "stop", and any other answer that made
        # calls with "tool_calls"; a cut-short answer keeps "length".
        if num_calls and reason == "stop" and self.choice != "named":
            return "tool_calls"
        return reason


def tool_reading(ctx: ServingContext, request: ChatCompletionRequest) -> ToolReading | None:
    """How ``request``'s answer is read for calls; None under ``tool_choice: "none"``.

    Raises:
        APIError: 400 for "auto" on a server without ``--enable-auto-tool-choice``.
    """
    choice = request.effective_tool_choice
    if choice == "none":
        return None
    if choice == "auto":
        if not ctx.enable_auto_tool_choice or ctx.tool_parser is None:
            raise APIError(
                400,
                'tool_choice: "auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set",
                "tool_choice",
            )
        return ToolReading("auto", parser=ctx.tool_parser)
    if choice == "required":
        return ToolReading("required")
    assert isinstance(choice, NamedToolChoice)
    return ToolReading("named", name=choice.function.name)


def tool_constraint(request: ChatCompletionRequest) -> StructuredOutputsParams | None:
    """The schema a required or named tool choice generates under."""
    tools = {tool.function.name: tool.function.parameters for tool in request.tools or []}
    if request.tool_choice == "required":
        listed = [{"name": name, "parameters": params} for name, params in tools.items()]
        schema = required_schema(listed, parallel=request.parallel_tool_calls is not False)
        return StructuredOutputsParams(json=schema)
    if isinstance(request.tool_choice, NamedToolChoice):
        params = tools[request.tool_choice.function.name]
        return StructuredOutputsParams(json=params or {"type": "object", "properties": {}})
    return None


def tool_calls_out(extracted: ExtractedToolCalls) -> list[ToolCallOut] | None:
    """The ``tool_calls`` of an assistant message; None when it made none."""
    if not extracted.tool_calls:
        return None
    return [
        ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
        for c in extracted.tool_calls
    ]


def tool_chunks(reader: ToolCallStream, text: str, finished: bool) -> list[DeltaMessage]:
    """The deltas a piece of text makes: runs of content, runs of tool-call parts."""
    parts = reader.feed(text)
    if finished:
        parts += reader.finish()
    messages: list[DeltaMessage] = []
    for part in parts:
        last = messages[-1] if messages else None
        if isinstance(part, str):
            if last is not None and last.content is not None:
                last.content += part
            else:
                messages.append(DeltaMessage(content=part))
            continue
        call = DeltaToolCall(
            index=part.index,
            id=part.id,
            type=None if part.id is None else "function",
            function=DeltaFunctionCall(name=part.name, arguments=part.arguments),
        )
        if last is not None and last.tool_calls is not None:
            last.tool_calls.append(call)
        else:
            messages.append(DeltaMessage(tool_calls=[call]))
    return messages
