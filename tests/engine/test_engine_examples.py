"""The programs in docs/examples run as documented (on a tiny random-weight model)."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import trio

from tests.engine.engine_helpers import build_tiny_model

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b"]
    return build_tiny_model(tmp_path_factory.mktemp("example-model"), corpus)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_transcript(out: str) -> None:
    assert "[streamed: finish_reason=" in out
    deadline = re.search(r"\[deadline: timed out=(\w+) after (\d+) of 400 tokens\]", out)
    assert deadline is not None and deadline.group(1) == "True"
    assert int(deadline.group(2)) < 400
    assert "[race: 'The rabbit' answered first; the other requests were aborted]" in out


def test_trio_example(model_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = load("trio_streaming").main

    async def guarded() -> None:
        with trio.fail_after(120):
            await main(model_dir)

    trio.run(guarded)
    check_transcript(capsys.readouterr().out)


def test_asyncio_example(model_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(asyncio.wait_for(load("asyncio_streaming").main(model_dir), 120))
    check_transcript(capsys.readouterr().out)
