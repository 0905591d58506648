"""What ``corral serve`` logs per request (issue 12, item 12): one summary line by
default, the prompt only when asked, cut at ``--max-log-len``; and ``/version``."""

from __future__ import annotations

import importlib.metadata
import json
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from tests.cli.cli_helpers import CORRAL, cli_env, free_port

PROMPT = "Once upon a purple time"


def serve_one_request(*flags: str) -> tuple[str, dict[str, str]]:
    """Start ``corral serve FLAGS``, complete PROMPT once, stop it; its log and /version."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [CORRAL, "serve", "--port", str(port), *flags],
            env=cli_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, "corral serve exited early"
                assert time.monotonic() < deadline, "corral serve not ready after 120s"
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=1):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.2)
            body = {"model": "storyteller", "prompt": PROMPT, "max_tokens": 5, "temperature": 0}
            request = urllib.request.Request(
                f"{base}/v1/completions",
                json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200
            with urllib.request.urlopen(f"{base}/version", timeout=10) as response:
                version = json.loads(response.read())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        log.seek(0)
        return log.read().decode(), version


def request_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("INFO corral.engine: Re")]


def test_default_is_one_summary_line_per_request_without_the_prompt() -> None:
    log, version = serve_one_request()
    lines = request_lines(log)
    assert len(lines) == 1, log
    (line,) = lines
    assert "prompt 6 tokens, max_tokens 5, finish length, generated 5 tokens" in line, line
    assert "first token" in line and "total" in line
    assert "purple" not in log and "Traceback" not in log
    assert version == {"version": importlib.metadata.version("corral")}


def test_verbose_logs_the_prompt_cut_at_max_log_len() -> None:
    log, _ = serve_one_request("--log-requests-verbose", "--max-log-len", "11")
    received = [line for line in request_lines(log) if "Received request" in line]
    assert len(received) == 1, log
    assert "prompt: 'Once upon a'," in received[0]
    assert "purple" not in log
    assert len(request_lines(log)) == 2
