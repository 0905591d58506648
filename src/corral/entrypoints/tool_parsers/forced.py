"""Reading the output of a forced tool choice (no parser flag needed).

``tool_choice: "required"`` generates, under a JSON schema, an array of calls
``[{"name": ..., "parameters": {...}}, ...]`` (vLLM's shape; the grammar writes
keys in sorted order, and "name" sorting first is what lets a stream announce each
call before its arguments); a named choice generates the named
function's arguments object alone. Both shapes are guaranteed by the grammar, so
reading them fails only when generation was cut short (``max_tokens``, a stop
string): the whole answer is then content, while a stream has already sent the
calls it began, their arguments cut where the text ended (as OpenAI does on
``finish_reason: "length"``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from corral.entrypoints.tool_parsers.base import (
    CallDelta,
    Delta,
    ExtractedToolCalls,
    ObjectScanner,
    ToolCall,
    ToolCallStream,
    call_head,
    collect,
    head_name,
    new_call_id,
)


def required_schema(tools: list[dict[str, Any]], *, parallel: bool = True) -> dict[str, Any]:
    """The JSON schema of a "required" answer: one or more calls of the given tools
    (at most one when ``parallel`` is false).

    Args:
        tools: ``{"name", "parameters"}`` of each function (parameters may be None).
        parallel: Whether several calls may be made at once.
    """
    items = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool["name"]]},
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


# The array's bracket and the previous call's closing brace and comma come before a call.
_ELEMENT_HEAD = re.compile(r"[\s\[,}]*" + call_head("parameters"))


class RequiredCallsStream(ToolCallStream):
    """Reads ``[{"name": ..., "parameters": {...}}, ...]`` as it is generated."""

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0  # everything before was handed out or skipped
        self._scanner: ObjectScanner | None = None
        self._index = -1

    @property
    def num_calls(self) -> int:
        return self._index + 1

    def feed(self, text: str) -> list[Delta]:
        self._text += text
        out: list[Delta] = []
        while True:
            if self._scanner is None:
                head = _ELEMENT_HEAD.match(self._text, self._pos)
                if head is None:
                    return out
                self._index += 1
                out.append(CallDelta(self._index, new_call_id(), head_name(head), ""))
                self._scanner = ObjectScanner()
                self._pos = head.end()
            end = self._scanner.scan(self._text, self._pos, len(self._text))
            upto = len(self._text) if end is None else end
            if upto > self._pos:
                out.append(CallDelta(self._index, None, None, self._text[self._pos : upto]))
            self._pos = upto
            if end is None:
                return out
            self._scanner = None

    def finish(self) -> list[Delta]:
        return []


def extract_required(text: str) -> ExtractedToolCalls:
    """The calls of a whole "required" answer; the text as content if it does not parse."""
    try:
        json.loads(text)
    except ValueError:
        return ExtractedToolCalls(text or None, [])
    stream = RequiredCallsStream()
    result = collect([*stream.feed(text), *stream.finish()])
    return ExtractedToolCalls(None, result.tool_calls)


class NamedCallStream(ToolCallStream):
    """Reads the arguments of the one named function as they are generated."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._started = False

    @property
    def num_calls(self) -> int:
        return int(self._started)

    def feed(self, text: str) -> list[Delta]:
        if self._started:
            return [CallDelta(0, None, None, text)] if text else []
        self._started = True
        return [CallDelta(0, new_call_id(), self._name, text)]

    def finish(self) -> list[Delta]:
        return [] if self._started else self.feed("")


def extract_named(name: str, text: str) -> ExtractedToolCalls:
    """The one call of a whole answer under a named tool choice."""
    return ExtractedToolCalls(None, [ToolCall(new_call_id(), name, text)])
