"""Every example of docs/quickstart.md (and the snippet on docs/index.md) runs as written.

Python blocks run in this process as scripts (their own globals, ``__name__`` is
``"__main__"``); console blocks run in bash with this interpreter's ``bin`` folder
first on PATH, as after ``source .venv/bin/activate``. The only change made to any
example is the server's port: a free one instead of 8000.
"""

from __future__ import annotations

import os
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

import pytest
import trio

import corral
from corral.default_model import default_model_path
from tests.docs.doc_blocks import Block, blocks, tagged

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = tagged("quickstart.md")
RUNNABLE = ("python", "console", "bash", "sh", "shell")


def shell_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    # One thread per process: the machine is shared, and the examples are small.
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1"}


def run_python(block: Block) -> None:
    code = compile(block.code, f"docs/quickstart.md:{block.line}", "exec")
    exec(code, {"__name__": "__main__"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The quickstart's ``corral serve`` command, run by bash on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        serve = QUICKSTART["serve"].commands()
        assert len(serve) == 1 and "--port 8000" in serve[0]
        script = "\n".join(
            [*QUICKSTART["model"].commands(), "exec " + serve[0].replace("8000", str(self.port))]
        )
        # A file, not a pipe: nobody reads the log while the server runs.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["bash", "-c", script], env=shell_env(), stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral serve exited early:\n{self.stop_and_read()[1]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"corral serve not ready after {timeout}s")

    def stop_and_read(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")
        self.log.close()
        return self.proc.returncode, output


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """Started when the module's first test needs it; the other tests run meanwhile."""
    proc = Server()
    try:
        yield proc
    finally:
        code, output = proc.stop_and_read()
    assert code == 0, output


def test_every_example_of_the_page_is_tagged_and_tested() -> None:
    for page in ("quickstart.md", "index.md"):
        untagged = [b.line for b in blocks(page) if b.lang in RUNNABLE and b.name is None]
        assert untagged == [], f"docs/{page}: untested example at lines {untagged}"
    assert set(QUICKSTART) == {
        "install", "install-pip", "model", "cli-generate", "cli-generate-output", "offline", "serve",
        "openai-client", "trio", "asyncio",
    }  # fmt: skip


def test_install_commands_name_what_exists() -> None:
    # Running bootstrap would reinstall into the shared .venv; the newcomer check in CI
    # runs it from a fresh clone. Here: the commands refer to what bootstrap provides.
    assert QUICKSTART["install"].commands() == ["scripts/bootstrap", "source .venv/bin/activate"]
    assert os.access(ROOT / "scripts" / "bootstrap", os.X_OK)
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "bootstrap")]).returncode == 0
    assert Path(sys.executable).parent.joinpath("corral").exists()


def test_pip_route_installs_this_version_and_ci_takes_it() -> None:
    # Building and installing a wheel here takes minutes: scripts/check_wheel.sh runs
    # that route in CI. Here: the commands name this version's wheel and that script.
    commands = QUICKSTART["install-pip"].commands()
    assert commands[0] == "python -m build"
    assert f"pip install dist/corral-{corral.__version__}-py3-none-any.whl" in commands
    assert commands[-1] == 'cd ~ && corral generate "Once upon a time"'
    assert os.access(ROOT / "scripts" / "check_wheel.sh", os.X_OK)
    assert "scripts/check_wheel.sh" in (ROOT / ".ci" / "run").read_text()


def test_model_command_prints_the_embedded_model_path() -> None:
    script = "\n".join([*QUICKSTART["model"].commands(), 'echo "$MODEL"'])
    out = subprocess.run(
        ["bash", "-c", script], env=shell_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == default_model_path()


def test_cli_generate_streams_a_story(server: Server) -> None:
    script = "\n".join([*QUICKSTART["model"].commands(), *QUICKSTART["cli-generate"].commands()])
    out = subprocess.run(
        ["bash", "-c", script], env=shell_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    shown = QUICKSTART["cli-generate-output"]
    # Greedy decoding of the embedded model: a retrained model needs the page updated.
    assert out.stdout == shown.code, f"docs/quickstart.md:{shown.line} shows another output"


def test_offline_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_python(QUICKSTART["offline"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == [
        "'Once upon a time'",
        "'Once upon a time, there was a little fox'",
    ]
    assert all(line.endswith((" length", " stop")) for line in lines)


def test_openai_client_example(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.wait_ready()
    block = QUICKSTART["openai-client"]
    assert "127.0.0.1:8000" in block.code
    moved = Block(block.name, block.lang, block.code.replace("8000", str(server.port)), block.line)
    run_python(moved)
    completion, chat = capsys.readouterr().out.rsplit("\n", 2)[:2]
    assert len(completion.split()) >= 5 and len(chat.split()) >= 5, (completion, chat)


def test_trio_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_python(QUICKSTART["trio"])
    out = capsys.readouterr().out
    assert out.count(" -> ") == 3
    assert out.rstrip().endswith("timed out: True")


def test_asyncio_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_python(QUICKSTART["asyncio"])
    out = capsys.readouterr().out
    assert out.count(" -> ") == 3
    assert out.rstrip().endswith("timed out; the request was aborted")


def test_index_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    # A fragment: it runs in the body of an async function with `path` set.
    snippet = tagged("index.md")["fragment"]
    body = "".join("    " + line + "\n" for line in snippet.code.splitlines())
    namespace = {"corral": corral, "path": default_model_path()}
    exec(compile("async def main():\n" + body, "docs/index.md", "exec"), namespace)
    trio.run(namespace["main"])
    assert capsys.readouterr().out.strip()
