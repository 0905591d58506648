"""Every command of README.md does what the README says (the two set-up commands, which
bootstrap the shared ``.venv`` and run the whole suite, are checked for what they name).

Commands are taken from the README's blocks as written; the only changes are the
``.venv/bin/`` prefix (this interpreter's ``bin`` folder) and the server's port (a
free one). A README that drifts from the behaviour fails here.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import corral
from corral.default_model import default_model_path
from tests.docs.doc_blocks import Block, blocks

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = blocks("../README.md")
BIN = str(Path(sys.executable).parent) + "/"


def block(lang: str, containing: str) -> Block:
    (found,) = [b for b in BLOCKS if b.lang == lang and containing in b.code]
    return found


def commands(code: str) -> list[str]:
    """The command of each line, its trailing comment dropped, ``.venv/bin/`` made ours."""
    found = []
    for line in code.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command:
            found.append(command.replace(".venv/bin/", BIN))
    return found


SETUP = block("bash", "scripts/bootstrap &&")
SERVE = block("bash", "corral serve")
CLIENT = block("python", "import openai")
SNIPPET = block("python", "open_engine")
SHOWN = [b for b in BLOCKS if b.lang == "" and "CompletionUsage" in b.code]
DEVELOPMENT = block("bash", "nox")


def run(command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_every_block_of_the_readme_is_checked() -> None:
    checked = {SETUP, SERVE, CLIENT, SNIPPET, DEVELOPMENT, *SHOWN}
    assert len(SHOWN) == 1
    assert [b.line for b in BLOCKS if b not in checked and b.lang not in ("", "text")] == []


def test_setup_commands_bootstrap_then_run_what_exists() -> None:
    setup = commands(SETUP.code)
    assert [c.split(" && ")[0] for c in setup] == ["scripts/bootstrap", "scripts/bootstrap"]
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "bootstrap")]).returncode == 0
    assert setup[1].split(" && ")[1] == f"{BIN}python -m pytest -q"


def test_the_main_job_streams_a_story() -> None:
    generate = commands(SETUP.code)[0].split(" && ", 1)[1]
    assert shlex.split(generate)[1:] == ["generate", "Once upon a time"]
    result = run(generate)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 20 and "Traceback" not in result.stderr


def test_the_async_snippet_streams(capsys: pytest.CaptureFixture[str]) -> None:
    # A fragment (top-level `async with`): run as the body of an async function.
    code = SNIPPET.code.replace("path/to/hf-model", default_model_path())
    assert code != SNIPPET.code
    body = "".join("    " + line + "\n" for line in code.splitlines())
    namespace: dict[str, Any] = {"corral": corral}
    exec(compile("async def main():\n" + body, "README.md", "exec"), namespace)
    trio.run(namespace["main"])
    assert capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def server_port() -> Iterator[tuple[int, int]]:
    """The README's port and the free one the server runs on instead."""
    (serve,) = commands(SERVE.code)
    port = int(serve.rsplit("--port", 1)[1].split()[0])
    free = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + serve.replace(str(port), str(free))],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "corral serve exited early"
            assert time.monotonic() < deadline, "corral serve not ready"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free}/health", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        yield port, free
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    assert proc.returncode == 0, output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_openai_snippet_prints_what_the_readme_shows(
    server_port: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    port, free = server_port
    assert f"127.0.0.1:{port}/v1" in CLIENT.code
    code = CLIENT.code.replace(f":{port}/", f":{free}/")
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    shown = SHOWN[0].code.splitlines()
    # The greedy completion and its usage are exact; the chat stream is sampled.
    assert printed[:2] == shown[:2]
    assert len(printed) == 3 and len(printed[2].split()) >= 5


def test_development_commands_name_what_exists() -> None:
    development = commands(DEVELOPMENT.code)
    sessions = run(f"{BIN}nox --list", timeout=60).stdout
    for command in development:
        words = shlex.split(command)
        if words[0].endswith("/nox"):
            named = words[words.index("-s") + 1 :]
            assert named and all(re.search(rf"\b{s}\b", sessions) for s in named), sessions
        else:
            assert words[0] == "bash" and (ROOT / words[1]).is_file(), command
            assert subprocess.run(["bash", "-n", str(ROOT / words[1])]).returncode == 0
