"""Helpers for tests that drive an async engine: waiting for it to settle."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from corral.engine import AsyncEngine


def is_idle(engine: AsyncEngine) -> bool:
    """True when, as of the engine's last step, the core held no request and every
    KV block was free (an aborted request counts until its final output is out), and
    no add or abort waits in the engine loop's inbox."""
    # Adds and aborts still in the loop's inbox are not in the snapshot yet; the loop
    # publishes a snapshot once it has applied them, so waiting on one is enough.
    if engine._has_pending_commands:
        return False
    stats = engine.stats()
    return stats.num_unfinished_requests == 0 and stats.num_free_blocks == stats.num_total_blocks


async def wait_idle(engine: AsyncEngine) -> None:
    """Wait until `is_idle`: every request the engine was given has ended and its
    KV blocks are free. Bound the wait with ``anyio.fail_after``.

    Requests still in the engine loop's inbox count as work. It reads the snapshots
    the engine loop publishes after each step (`AsyncEngine.next_stats`): a busy
    engine always takes another step.

    Raises:
        EngineDeadError: the engine died meanwhile.
    """
    while not is_idle(engine):
        await engine.next_stats()
    await anyio.lowlevel.checkpoint()
