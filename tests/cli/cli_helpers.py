"""Running the ``corral`` console script as a user does: a subprocess, its exit status,
its stdout and its stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

CORRAL = str(Path(sys.executable).parent / "corral")


def cli_env() -> dict[str, str]:
    # One thread per process: the machine is shared and the embedded model is tiny.
    # Offline: a model id must fail as it does on a machine without a network.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}


def run_corral(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``corral ARGS`` to completion."""
    return subprocess.run(
        [CORRAL, *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def start_corral(*args: str) -> subprocess.Popen[bytes]:
    """``corral ARGS`` in the background, stdout and stderr piped (unbuffered bytes)."""
    return subprocess.Popen(
        [CORRAL, *args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], status: int, message: str
) -> None:
    """Exit ``status``, no traceback, and stderr is one line that contains ``message``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
