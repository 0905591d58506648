"""The tool-call parser interface, its registry, and the JSON call reader the formats share.

A parser reads a model's text two ways: whole (`ToolParser.extract`, for a
non-streamed answer) and piece by piece (`ToolParser.stream`, one `ToolCallStream`
per choice), which turns text deltas into OpenAI deltas: content, or a part of a
tool call. A call's first delta carries its id and name, later ones append to its
``arguments`` text, so that a client that concatenates the arguments (as the
``openai`` client's stream helpers do) gets the same call as the whole answer has.

A call's ``arguments`` is the text of the arguments object exactly as the model
wrote it (the whole and the streamed answer agree on it; it parses as the object).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import attrs

from corral.entrypoints.responses import random_id
from corral.sampling_params import SamplingParams


@attrs.frozen
class ToolCall:
    """One complete call: ``arguments`` is JSON text of an object."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class ExtractedToolCalls:
    """A model's answer split into text for the user and tool calls (none: ``[]``)."""

    content: str | None
    tool_calls: list[ToolCall]


@attrs.frozen
class CallDelta:
    """A part of tool call ``index``: the first part carries ``id`` and ``name``."""

    index: int
    id: str | None
    name: str | None
    arguments: str


Delta = str | CallDelta
"""What a stream hands out: content text, or a part of a tool call."""


class ToolCallStream(ABC):
    """Reads one choice's text delta by delta (see the module docstring)."""

    @abstractmethod
    def feed(self, text: str) -> list[Delta]:
        """The deltas that ``text`` (new since the previous call) completes; text that
        may still turn out to be part of a call is held back."""

    @abstractmethod
    def finish(self) -> list[Delta]:
        """The deltas held back when the text ends."""

    @property
    @abstractmethod
    def num_calls(self) -> int:
        """Calls started so far."""


class ToolParser(ABC):
    """A model family's tool-call format. Subclasses set `name` and register with
    `register_tool_parser`; the server makes one instance and shares it."""

    name: ClassVar[str]

    @abstractmethod
    def extract(self, text: str) -> ExtractedToolCalls:
        """The content and the calls of a whole answer. Text that looks like a call
        but does not parse stays in the content: a malformed call is not an error."""

    @abstractmethod
    def stream(self) -> ToolCallStream:
        """A fresh reader for one streamed choice."""

    def adjust_params(self, params: SamplingParams) -> SamplingParams:
        """The sampling parameters of a request this parser will read (e.g. keeping
        special tokens in the text when the format's tags are special tokens)."""
        return params


_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(cls: type[ToolParser]) -> type[ToolParser]:
    """Make ``cls`` available as ``--tool-call-parser cls.name`` (a class decorator)."""
    if cls.name in _PARSERS:
        raise ValueError(f"tool call parser {cls.name!r} is already registered")
    _PARSERS[cls.name] = cls
    return cls


def tool_parser_names() -> list[str]:
    """The registered parser names, sorted."""
    return sorted(_PARSERS)


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class registered as ``name``.

    Raises:
        ValueError: No parser has that name (the message lists those that exist).
    """
    try:
        return _PARSERS[name]
    except KeyError:
        raise ValueError(
            f"tool_call_parser: unknown parser {name!r}; choose one of "
            f"{', '.join(tool_parser_names())}"
        ) from None


def new_call_id() -> str:
    """A fresh tool call id (vLLM's form)."""
    return random_id("chatcmpl-tool")


def collect(deltas: Iterable[Delta]) -> ExtractedToolCalls:
    """What a client rebuilds from a stream's deltas: content joined, each call's
    arguments concatenated."""
    content: list[str] = []
    calls: dict[int, list[str]] = {}
    heads: dict[int, tuple[str, str]] = {}
    for delta in deltas:
        if isinstance(delta, str):
            content.append(delta)
            continue
        if delta.id is not None and delta.name is not None:
            heads[delta.index] = (delta.id, delta.name)
        calls.setdefault(delta.index, []).append(delta.arguments)
    text = "".join(content)
    return ExtractedToolCalls(
        content=text or None,
        tool_calls=[ToolCall(heads[i][0], heads[i][1], "".join(calls[i])) for i in sorted(calls)],
    )


def call_head(arguments_key: str) -> str:
    """The pattern of the start of a call object written name first, up to (not
    including) its arguments object under ``arguments_key``: what lets a stream
    announce a call and then pass its arguments on as they come."""
    name = r'"((?:[^"\\\x00-\x1f]|\\.)+)"'
    return rf'\s*\{{\s*"name"\s*:\s*{name}\s*,\s*"{re.escape(arguments_key)}"\s*:\s*(?=\{{)'


CALL_HEAD = re.compile(call_head("arguments"))


def head_name(match: re.Match[str]) -> str:
    """The function name a `CALL_HEAD` match holds, its escapes decoded."""
    return str(json.loads(f'"{match.group(1)}"'))


@attrs.define
class ObjectScanner:
    """Finds where a JSON object (or array) ends, text piece by text piece: counts
    brackets outside strings. It checks no other syntax: `parse_call` does that."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def scan(self, text: str, start: int, stop: int) -> int | None:
        """Read ``text[start:stop]``; the index just past the closing bracket, or None
        if the value goes on."""
        for i in range(start, stop):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


def parse_call(text: str) -> tuple[str, str] | None:
    """``(name, arguments)`` of a call object's JSON text ``{"name": ..., "arguments": {...}}``,
    or None when it is not one (bad JSON, no name, arguments not an object; other keys
    are ignored).

    ``arguments`` is the arguments object's text as written when the name comes first
    (what a stream passed on), else the object re-encoded."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("name"), str)
        or not value["name"]
        or not isinstance(value.get("arguments"), dict)
    ):
        return None
    match = CALL_HEAD.match(text)
    if match is not None:
        scanner = ObjectScanner()
        end = scanner.scan(text, match.end(), len(text))
        if end is not None:
            return value["name"], text[match.end() : end]
    return value["name"], json.dumps(value["arguments"], ensure_ascii=False)
