"""Faults of a distributed engine: a killed engine actor, a dead replica, no Ray."""

from __future__ import annotations

import socket
import sys

import anyio
import pytest

from corral.engine import open_engine
from corral.errors import DistributedError, EngineDeadError
from corral.testing import wait_idle
from tests.distributed.ray_helpers import (
    live_engine_actors,
    live_placement_groups,
    open_fake_engine,
)
from tests.engine.engine_helpers import greedy

pytestmark = pytest.mark.anyio

# The bound: a stream on a dead actor raises within this, never hangs.
DEAD_WITHIN = 30.0


def kill(core: object) -> None:
    import ray

    ray.kill(core.actor)  # type: ignore[attr-defined]


@pytest.mark.usefixtures("ray_session")
async def test_killed_engine_actor_fails_its_streams_naming_it() -> None:
    with anyio.fail_after(DEAD_WITHIN):
        with pytest.raises(DistributedError, match="corral-engine-") as info:
            async with open_fake_engine(True, step_delay=0.01, log_stats=False) as engine:
                name = engine._core.name  # type: ignore[attr-defined]
                async with engine.generate(None, greedy(500), prompt_token_ids=[1, 2]) as stream:
                    await stream.__anext__()
                    kill(engine._core)
                    with pytest.raises(EngineDeadError, match=name) as dead:
                        async for _ in stream:
                            pass
                assert isinstance(dead.value.__cause__, DistributedError)
                assert engine.errored and not engine.is_running
                with pytest.raises(EngineDeadError, match=name):
                    engine.generate(None, greedy(1), prompt_token_ids=[1])
    # open_engine re-raises the cause itself, not an ExceptionGroup.
    assert name in str(info.value)
    assert live_engine_actors() == []
    assert live_placement_groups() == []


@pytest.mark.usefixtures("ray_session")
async def test_dead_replica_fails_only_its_own_requests() -> None:
    with anyio.fail_after(DEAD_WITHIN):
        async with open_fake_engine(
            True, data_parallel_size=2, step_delay=0.01, log_stats=False
        ) as engine:
            first, second = engine._replicas
            # Routed to the least loaded replica: one each.
            on_first = engine.generate(None, greedy(500), prompt_token_ids=[1, 2])
            on_second = engine.generate(None, greedy(20), prompt_token_ids=[3, 4])
            assert on_first._state.request_id in first.loop.live
            assert on_second._state.request_id in second.loop.live
            async with on_first, on_second:
                await on_first.__anext__()
                kill(first.core)
                with pytest.raises(EngineDeadError, match=first.name):
                    async for _ in on_first:
                        pass
                outs = [out async for out in on_second]
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 20
            assert engine.is_running and not engine.errored
            health = engine.replica_health()
            assert health[second.name] is None and first.name in (health[first.name] or "")
            # New requests go to the live replica.
            for i in range(3):
                async with engine.generate(None, greedy(3), prompt_token_ids=[5 + i]) as stream:
                    assert [o.finished async for o in stream][-1]
            await wait_idle(engine)
    assert live_engine_actors() == []
    assert live_placement_groups() == []


@pytest.mark.usefixtures("ray_session")
async def test_idle_replicas_deaths_are_seen_and_the_last_one_kills_the_engine() -> None:
    with anyio.fail_after(DEAD_WITHIN):
        with pytest.raises(DistributedError, match="corral-engine-"):
            async with open_fake_engine(True, data_parallel_size=2, log_stats=False) as engine:
                first, second = engine._replicas
                kill(first.core)
                # No request is in flight: the actor's death is noticed all the same.
                while first.alive:
                    await first.loop.wait_published()  # a death wakes its readers
                assert engine.is_running
                async with engine.generate(None, greedy(2), prompt_token_ids=[1]) as stream:
                    assert [o.finished async for o in stream][-1]
                kill(second.core)
                while engine.is_running:
                    await second.loop.wait_published()
                with pytest.raises(EngineDeadError, match="corral-engine-"):
                    engine.generate(None, greedy(1), prompt_token_ids=[1])
    assert live_engine_actors() == []
    assert live_placement_groups() == []


async def test_ray_missing_is_a_clear_error_at_open_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DistributedError, match=r"pip install corral\[ray\]"):
        async with open_engine(model="unused", engine_use_ray=True):
            pass


async def test_unreachable_ray_address_is_a_clear_error_at_open_engine() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    with anyio.fail_after(DEAD_WITHIN):
        with pytest.raises(DistributedError, match="ray start --head"):
            async with open_engine(model="unused", data_parallel_size=2, ray_address=address):
                pass
