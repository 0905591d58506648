"""The examples of docs/concepts.md run as written and print what the page says.

Where the page says "prints", the output must match its text block exactly; where it
says "prints something like" (timing decides the numbers), the output must have the
same shape and obey the property the page explains.
"""

from __future__ import annotations

import re

import pytest

from tests.docs.doc_blocks import Block, blocks

PAGE = "concepts.md"
RUNNABLE = ("python", "console", "bash", "sh", "shell")


def example(name: str) -> tuple[Block, str]:
    """The tagged block and the text block that follows it (its printed output)."""
    page = blocks(PAGE)
    index = next(i for i, b in enumerate(page) if b.name == name)
    shown = page[index + 1]
    assert shown.lang == "text", f"docs/{PAGE}: no output shown after {name!r}"
    return page[index], shown.code


def run(block: Block, capsys: pytest.CaptureFixture[str]) -> str:
    exec(compile(block.code, f"docs/{PAGE}:{block.line}", "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def test_every_example_of_the_page_is_tagged_and_tested() -> None:
    untagged = [b.line for b in blocks(PAGE) if b.lang in RUNNABLE and b.name is None]
    assert untagged == [], f"docs/{PAGE}: untested example at lines {untagged}"
    assert {b.name for b in blocks(PAGE) if b.name} == {"cancel", "coalesce", "death", "prefix"}


def test_cancellation_aborts_and_frees_every_block(capsys: pytest.CaptureFixture[str]) -> None:
    block, shown = example("cancel")
    out = run(block, capsys)
    pattern = r"cancelled after (\d+) of 100 tokens\nfree blocks: 64 of 64\n"
    assert re.fullmatch(pattern, shown)
    match = re.fullmatch(pattern, out)
    assert match is not None, out
    assert int(match.group(1)) < 100


def test_a_slow_reader_sees_fewer_outputs_and_the_final_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    block, shown = example("coalesce")
    out = run(block, capsys)
    pattern = r"(\d+) outputs read for 100 tokens; finished: True\n"
    assert re.fullmatch(pattern, shown)
    match = re.fullmatch(pattern, out)
    assert match is not None, out
    assert int(match.group(1)) < 100


@pytest.mark.parametrize("name", ["death", "prefix"])
def test_example_prints_what_the_page_shows(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    block, shown = example(name)
    assert run(block, capsys) == shown
