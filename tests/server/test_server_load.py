"""Many clients at once against a real server: abandoned streams are aborted and cleaned up."""

from __future__ import annotations

import re

import anyio
import httpx2
import pytest

from tests.server.server_helpers import SERVED_NAME, ServerProcess

pytestmark = [
    pytest.mark.anyio,
    # Leaving httpx2's line iterator early abandons its inner async generators, and
    # trio's finalizer warns about them at garbage collection: a client-library
    # matter, and exactly what a client cutting off a stream does.
    pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning"),
]

NUM_CLIENTS = 100


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when the series does not exist yet)."""
    wanted = {"model_name": SERVED_NAME, **labels}
    for line in text.splitlines():
        match = re.match(r"^([^{ ]+)(?:\{([^}]*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == wanted:
            return float(match.group(3))
    return 0.0


async def test_streams_cut_off_mid_way_are_aborted_and_free_the_cache(
    server: ServerProcess,
) -> None:
    limits = httpx2.Limits(max_connections=2 * NUM_CLIENTS)
    async with httpx2.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
        before = (await client.get("/metrics")).text
        aborted_before = metric(before, "corral:request_success_total", finished_reason="abort")
        all_started = anyio.Event()
        started = 0
        body = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True, "stream": True}

        async def cut_off_client() -> None:
            nonlocal started
            async with client.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        break
                started += 1
                if started == NUM_CLIENTS:
                    all_started.set()
                # Clients hold their streams open together, but each for at most a
                # second: far less than its 200 tokens take, so that every one of them
                # is cut off mid-stream even when the others are slow to connect.
                with anyio.move_on_after(1.0):
                    await all_started.wait()

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for _ in range(NUM_CLIENTS):
                    tg.start_soon(cut_off_client)
            while True:
                text = (await client.get("/metrics")).text
                idle = metric(text, "corral:num_requests_running") == 0
                if idle and metric(text, "corral:kv_cache_usage_perc") == 0:
                    break
                await anyio.sleep(0.05)
        aborted = metric(text, "corral:request_success_total", finished_reason="abort")
        assert aborted - aborted_before == NUM_CLIENTS
        assert metric(text, "corral:num_requests_waiting") == 0
        # No stream ran to its end: each was aborted long before 200 tokens.
        assert metric(text, "corral:request_success_total", finished_reason="length") == metric(
            before, "corral:request_success_total", finished_reason="length"
        )

        statuses: list[int] = []

        async def later_client(i: int) -> None:
            response = await client.post(
                "/v1/completions",
                json={"prompt": f"Request {i}", "max_tokens": 4, "ignore_eos": True},
            )
            statuses.append(response.status_code)
            assert response.json()["usage"]["completion_tokens"] == 4

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for i in range(NUM_CLIENTS):
                    tg.start_soon(later_client, i)
        assert statuses == [200] * NUM_CLIENTS
