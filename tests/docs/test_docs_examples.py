"""The programs of docs/examples run as their docstrings say, with no argument (the
embedded model), and show what they claim: a stream, a deadline that cuts a request
in the middle, a race whose losers are aborted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.parametrize("name", ["trio_streaming", "asyncio_streaming"])
def test_example_runs_on_the_embedded_model(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    story = out.split("[streamed: finish_reason=")[0]
    assert len(story.split()) >= 5, out
    deadline = re.search(r"\[deadline: timed out=(\w+) after (\d+) of 400 tokens\]", out)
    assert deadline is not None, out
    # Cut in the middle: tokens arrived before the deadline, and not all of them.
    assert deadline.group(1) == "True" and 0 < int(deadline.group(2)) < 400, out
    assert "[race: 'The rabbit' answered first; the other requests were aborted]" in out
