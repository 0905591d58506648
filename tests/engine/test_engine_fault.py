"""A step that raises kills the engine: streams fail, later calls fail, exit re-raises."""

from __future__ import annotations

import anyio
import pytest

from corral.engine import open_engine_from_core
from corral.errors import EngineDeadError
from corral.testing import FakeModelError
from tests.engine.engine_helpers import TIMEOUT, fake_core, greedy

pytestmark = pytest.mark.anyio


async def test_every_live_stream_raises_engine_dead_error_with_the_cause() -> None:
    errors: list[BaseException] = []
    with anyio.fail_after(TIMEOUT), pytest.raises(FakeModelError, match="step 4") as caught:
        async with open_engine_from_core(fake_core(fail_at_step=4), log_stats=False) as engine:

            async def consume(i: int) -> None:
                try:
                    async for _ in engine.generate(None, greedy(50), prompt_token_ids=[i + 1]):
                        pass
                except EngineDeadError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(consume, i)
            assert not engine.is_running
            with pytest.raises(EngineDeadError) as later:
                engine.generate(None, greedy(1), prompt_token_ids=[1])
    assert len(errors) == 3
    assert all(e.__cause__ is caught.value for e in errors)
    assert later.value.__cause__ is caught.value


async def test_exit_re_raises_the_original_error_not_a_group() -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(FakeModelError) as caught:
            async with open_engine_from_core(fake_core(fail_at_step=2), log_stats=False) as engine:
                async for _ in engine.generate(None, greedy(10), prompt_token_ids=[1, 2]):
                    pass
    assert type(caught.value) is FakeModelError


async def test_exit_re_raises_even_when_the_block_swallowed_the_dead_error() -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(FakeModelError):
            async with open_engine_from_core(fake_core(fail_at_step=1), log_stats=False) as engine:
                with pytest.raises(EngineDeadError):
                    async with engine.generate(None, greedy(5), prompt_token_ids=[1]) as s:
                        async for _ in s:
                            pass


async def test_a_stream_opened_after_the_fault_fails_at_once() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(FakeModelError):
        async with open_engine_from_core(fake_core(fail_at_step=1), log_stats=False) as engine:
            stream = engine.generate(None, greedy(5), prompt_token_ids=[1])
            with pytest.raises(EngineDeadError):
                await stream.__anext__()
            with pytest.raises(EngineDeadError, match="FakeModelError"):
                engine.generate(None, greedy(5), prompt_token_ids=[1])
            await engine.abort(stream.request_id)


async def test_errors_of_the_block_itself_are_not_wrapped() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(KeyError):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            stream = engine.generate(None, greedy(50), prompt_token_ids=[1])
            await stream.__anext__()
            raise KeyError("from the block")


async def test_requests_not_yet_seen_by_the_loop_also_fail() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(FakeModelError):
        core = fake_core(step_delay=0.05, fail_on_token=7)
        async with open_engine_from_core(core, log_stats=False) as engine:
            # The first step sleeps, then fails on writing token 7.
            running = engine.generate(None, greedy(5), prompt_token_ids=[7])
            await core.runner.wait_for_step(1, started=True)
            assert engine.is_running
            # Submitted while the failing step runs: still in the inbox when it fails.
            pending = engine.generate(None, greedy(5), prompt_token_ids=[2])
            for stream in (running, pending):
                with pytest.raises(EngineDeadError) as dead:
                    async with stream:
                        async for _ in stream:
                            pass
                assert isinstance(dead.value.__cause__, FakeModelError)


async def test_an_ended_request_leaves_no_channel_open_for_the_collector() -> None:
    """Once the engine is done with a request it closes both ends of its channel, so
    an unread stream caught in a reference cycle cannot leave an unclosed channel to
    the garbage collector, whichever object it finalizes first."""
    with anyio.fail_after(TIMEOUT), pytest.raises(FakeModelError):
        async with open_engine_from_core(fake_core(fail_at_step=1), log_stats=False) as engine:
            unread = engine.generate(None, greedy(5), prompt_token_ids=[1])
            # Another request's stream reports the death without polling.
            with pytest.raises(EngineDeadError):
                async for _ in engine.generate(None, greedy(5), prompt_token_ids=[2]):
                    pass
    with pytest.raises(anyio.ClosedResourceError):
        unread._state.receive.receive_nowait()
    with pytest.raises(EngineDeadError):
        await unread.__anext__()


async def test_engine_death_does_not_cancel_the_owners_block() -> None:
    """The decided behaviour (docs/concepts.md, "Engine death"): the loop never raises
    into the engine's task group, so a block that reads no stream keeps running after
    the engine died, is not cancelled at its checkpoints, and sees the fault through
    `is_running` and `generate`; leaving the block re-raises the step's error."""
    core = fake_core(fail_at_step=1)
    checkpoints_after_death = 0
    with anyio.fail_after(TIMEOUT), pytest.raises(FakeModelError):
        async with open_engine_from_core(core, log_stats=False) as engine:
            unread = engine.generate(None, greedy(5), prompt_token_ids=[1])
            await core.runner.wait_for_step(1)
            # The owner learns of the death only when it asks the engine for something.
            with pytest.raises(EngineDeadError):
                while True:
                    await engine.next_stats()
            assert not engine.is_running
            for _ in range(10):
                await anyio.sleep(0.001)
                checkpoints_after_death += 1
            with pytest.raises(EngineDeadError):
                engine.generate(None, greedy(5), prompt_token_ids=[2])
            unread.close()
    assert checkpoints_after_death == 10
