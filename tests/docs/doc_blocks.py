"""Code blocks of the documentation pages, found by the tag that precedes them.

A tag is a MyST comment line ``% docs-test: NAME`` right before a fenced block; it
does not render. Tests look blocks up by name and run them as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
_TAG = re.compile(r"^% docs-test: (\S+)\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\{[\w-]+\}\s*)?(\w*)")


@dataclass(frozen=True)
class Block:
    """One fenced block: its tag (None when untagged), language, text and 1-based line."""

    name: str | None
    lang: str
    code: str
    line: int

    def commands(self) -> list[str]:
        """The ``$ ``-prefixed lines of a console block, without the prompt."""
        return [line[2:] for line in self.code.splitlines() if line.startswith("$ ")]


def blocks(page: str) -> list[Block]:
    """Every fenced block of ``docs/<page>``, in order."""
    lines = (DOCS / page).read_text().splitlines()
    found: list[Block] = []
    tag: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _TAG.match(line)
        fence = _FENCE.match(line)
        if match:
            tag = match.group(1)
        elif fence:
            marker = fence.group(1)
            end = i + 1
            while end < len(lines) and not lines[end].startswith(marker):
                end += 1
            code = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Block(tag, fence.group(3), code, i + 1))
            tag = None
            i = end
        elif line.strip():
            tag = None
        i += 1
    return found


def tagged(page: str) -> dict[str, Block]:
    """The tagged blocks of ``docs/<page>`` by name."""
    return {b.name: b for b in blocks(page) if b.name is not None}
