"""SIGTERM or SIGINT during streams: in-flight streams finish (or are cut at the
timeout), and the process exits with code 0."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import httpx2

from tests.server.server_helpers import ServerProcess

Payloads = list[tuple[float, str]]


def stream_completion(url: str, max_tokens: int, started: Barrier) -> Payloads:
    """Stream one completion; return its SSE payloads with their arrival times
    (reaching the barrier at the first)."""
    body = {
        "prompt": "Once upon a time",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    payloads: Payloads = []
    try:
        with httpx2.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payloads.append((time.monotonic(), line[len("data: ") :]))
                    if len(payloads) == 1:
                        started.wait()
    except httpx2.TransportError:
        pass  # the server cut the stream at its shutdown deadline
    return payloads


def run_streams(server: ServerProcess, count: int, max_tokens: int) -> list[Future[Payloads]]:
    """Start ``count`` streams; return once each has received its first chunk."""
    started = Barrier(count + 1)
    pool = ThreadPoolExecutor(count)
    futures = [
        pool.submit(stream_completion, server.url, max_tokens, started) for _ in range(count)
    ]
    started.wait(timeout=60)
    pool.shutdown(wait=False)
    return futures


def refuses_connections(url: str, within: float) -> bool:
    """Whether the server stops accepting connections within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"{url}/health", timeout=1)
        except httpx2.TransportError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_lets_inflight_streams_finish_then_exits_zero(tiny_model: Path) -> None:
    server = ServerProcess(tiny_model, loop="trio")
    try:
        server.wait_ready()
        futures = run_streams(server, count=8, max_tokens=240)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert refuses_connections(server.url, within=5)
        results = [future.result(timeout=60) for future in futures]
        # The streams were in flight at the signal, and ran to their end after it.
        assert any(arrived > signalled for payloads in results for arrived, _ in payloads)
        for payloads in results:
            assert payloads[-1][1] == "[DONE]"
            assert json.loads(payloads[-2][1])["choices"][0]["finish_reason"] == "length"
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()


def test_sigint_past_the_timeout_cuts_streams_and_exits_zero(tiny_model: Path) -> None:
    server = ServerProcess(tiny_model, "--shutdown-timeout", "0.3", loop="asyncio")
    try:
        server.wait_ready()
        futures = run_streams(server, count=8, max_tokens=240)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 15
        results = [future.result(timeout=30) for future in futures]
        assert any(payloads[-1][1] != "[DONE]" for payloads in results)
    finally:
        server.stop()
