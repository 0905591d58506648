"""The Hermes format (Hermes 2 Pro, Qwen 2.5 and later, the embedded default model):
each call is a JSON object ``{"name": ..., "arguments": {...}}`` between
``<tool_call>`` and ``</tool_call>``; text outside the tags is content.

A block whose JSON is not a call (bad JSON, missing name, arguments not an object)
stays in the content, tags included. A last block left open when the text ends
counts as a call when its JSON is complete (models often stop right after it).
Content made only of whitespace (the newlines between blocks) is dropped.

Streaming announces a call as soon as its name is read and passes the arguments on
as they come; it cannot take back a call it announced, so a block that turns out
malformed after its name was streamed stays a (malformed) call in the stream while
the whole answer shows it as content. A block whose keys come in another order is
sent whole when it closes.
"""

from __future__ import annotations

import re

import attrs

from corral.entrypoints.tool_parsers.base import (
    CALL_HEAD,
    CallDelta,
    Delta,
    ExtractedToolCalls,
    ObjectScanner,
    ToolCall,
    ToolCallStream,
    ToolParser,
    head_name,
    new_call_id,
    parse_call,
    register_tool_parser,
)
from corral.sampling_params import SamplingParams

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + "(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


@register_tool_parser
class HermesToolParser(ToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (see the module docstring)."""

    name = "hermes"

    def extract(self, text: str) -> ExtractedToolCalls:
        content: list[str] = []
        calls: list[ToolCall] = []
        pos = 0
        for block in _BLOCK.finditer(text):
            content.append(text[pos : block.start()])
            pos = block.end()
            call = parse_call(block.group(1))
            if call is None:
                content.append(block.group(0))
            else:
                calls.append(ToolCall(new_call_id(), *call))
        content.append(text[pos:])
        kept = "".join(piece for piece in content if piece.strip())
        return ExtractedToolCalls(kept or None, calls)

    def stream(self) -> ToolCallStream:
        return _HermesStream()

    def adjust_params(self, params: SamplingParams) -> SamplingParams:
        # Qwen and Hermes tokenizers make the tags tokens of their own, marked special
        # in some of them: skipping special tokens would erase the tags (as vLLM's
        # parser, keep them).
        return attrs.evolve(params, skip_special_tokens=False)


class _HermesStream(ToolCallStream):
    def __init__(self) -> None:
        self._buffer = ""  # text not yet handed out
        self._inside = False
        # Outside a block: the text since the last block, held while it is only
        # whitespace (such a piece is not content).
        self._blank = ""
        self._visible = False
        # Inside a block: the call was announced; its arguments are being scanned.
        self._scanner: ObjectScanner | None = None
        self._scanned = 0  # how much of the buffer's arguments was passed on
        self._args_done = False
        self._index = -1

    @property
    def num_calls(self) -> int:
        return self._index + 1

    def feed(self, text: str) -> list[Delta]:
        self._buffer += text
        out: list[Delta] = []
        while True:
            before = (self._inside, len(self._buffer))
            if self._inside:
                self._read_block(out, final=False)
            else:
                self._read_content(out, final=False)
            if (self._inside, len(self._buffer)) == before:
                return out

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._inside:
            self._read_block(out, final=True)
        self._read_content(out, final=True)
        return out

    def _content(self, out: list[Delta], text: str) -> None:
        if not text:
            return
        if self._visible:
            out.append(text)
            return
        self._blank += text
        if self._blank.strip():
            out.append(self._blank)
            self._blank = ""
            self._visible = True

    def _new_piece(self) -> None:
        self._blank = ""
        self._visible = False

    def _read_content(self, out: list[Delta], *, final: bool) -> None:
        start = self._buffer.find(OPEN)
        if start >= 0:
            self._content(out, self._buffer[:start])
            self._new_piece()
            self._buffer = self._buffer[start + len(OPEN) :]
            self._inside = True
            return
        keep = 0 if final else _partial_tag(self._buffer, OPEN)
        self._content(out, self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep :]

    def _read_block(self, out: list[Delta], *, final: bool) -> None:
        end = self._buffer.find(CLOSE)
        if self._scanner is None:
            head = CALL_HEAD.match(self._buffer, 0, end if end >= 0 else len(self._buffer))
            if head is not None:
                self._index += 1
                out.append(CallDelta(self._index, new_call_id(), head_name(head), ""))
                self._scanner = ObjectScanner()
                self._scanned = head.end()
        if self._scanner is not None and not self._args_done:
            # The arguments end at their closing brace; a close tag ends them early.
            stop = end if end >= 0 else len(self._buffer)
            if end < 0 and not final:
                stop -= _partial_tag(self._buffer, CLOSE)
            done = self._scanner.scan(self._buffer, self._scanned, stop)
            upto = stop if done is None else done
            if upto > self._scanned:
                out.append(CallDelta(self._index, None, None, self._buffer[self._scanned : upto]))
                self._scanned = upto
            self._args_done = done is not None
        if end < 0 and not final:
            return
        block = self._buffer if end < 0 else self._buffer[:end]
        self._buffer = "" if end < 0 else self._buffer[end + len(CLOSE) :]
        if self._scanner is None:
            # Not announced: the block is sent whole, as a call or as content.
            call = parse_call(block)
            if call is None:
                self._content(out, OPEN + block + ("" if end < 0 else CLOSE))
                self._new_piece()
            else:
                self._index += 1
                out.append(CallDelta(self._index, new_call_id(), call[0], call[1]))
        self._inside = False
        self._scanner = None
        self._scanned = 0
        self._args_done = False
