"""The seed's (vLLM 0.3) `AsyncLLMEngine` surface: its constructor, an owner-run
engine loop (``start_engine_loop=False``), health and stats methods."""

from __future__ import annotations

import logging

import anyio
import pytest

from corral.async_llm_engine import AsyncLLMEngine
from corral.config import AsyncEngineArgs
from corral.engine import open_engine_from_core
from corral.errors import EngineClosedError, EngineDeadError
from corral.testing import FakeModelError
from tests.engine.engine_helpers import TIMEOUT, fake_core, greedy

pytestmark = pytest.mark.anyio


def test_seed_constructor_maps_positional_and_keyword_engine_args() -> None:
    engine = AsyncLLMEngine(
        False, False, "some/model", max_log_len=7, log_requests=False, block_size=32
    )
    assert engine.engine_args == AsyncEngineArgs(
        model="some/model", max_log_len=7, log_requests=False, block_size=32
    )
    assert not engine.log_requests and engine.max_log_len == 7
    assert not engine.is_running and not engine.is_stopped and not engine.errored
    same = AsyncLLMEngine.from_engine_args(engine.engine_args, start_engine_loop=False)
    assert same.engine_args == engine.engine_args and not same.start_engine_loop


def test_seed_constructor_takes_engine_use_ray() -> None:
    engine = AsyncLLMEngine(False, True, model="m", data_parallel_size=2)
    assert engine.engine_args.engine_use_ray and engine.engine_args.data_parallel_size == 2


def test_seed_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="from_engine_args"):
        AsyncLLMEngine(AsyncEngineArgs(model="m"), False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="given twice"):
        AsyncLLMEngine(False, False, "m", model="n")
    with pytest.raises(ValueError, match="no_such_field"):
        AsyncLLMEngine(False, False, no_such_field=1)
    with pytest.raises(ValueError, match="block_size"):
        AsyncLLMEngine(False, False, "m", block_size=0)


async def test_owner_run_loop_serves_queued_requests_and_stops_with_the_block() -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            async with open_engine_from_core(
                fake_core(), log_stats=False, start_engine_loop=False
            ) as engine:
                stream = engine.generate(None, greedy(3), prompt_token_ids=[1, 2])
                await anyio.sleep(0.05)
                # Queued: nothing runs the loop yet.
                assert not engine.is_running and engine._core.stats().num_waiting == 0
                await engine.check_health()
                tg.start_soon(engine.run_engine_loop)
                outputs = [out async for out in stream]
                assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 3
                assert engine.is_running
                with pytest.raises(RuntimeError, match="already running"):
                    await engine.run_engine_loop()
                # A live request when the block is left: aborted, loop returns.
                engine.generate(None, greedy(10_000), prompt_token_ids=[3], request_id="live")
            # The block waited for the owner's loop to return before leaving.
            assert not engine._loop.running and engine.is_stopped
        assert engine._core.stats().num_running == 0


async def test_owner_cancelling_the_loop_keeps_requests_queued_and_it_can_restart() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(step_delay=0.01), log_stats=False, start_engine_loop=False
        ) as engine:
            stream = engine.generate(None, greedy(40), prompt_token_ids=[1])
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.run_engine_loop)
                await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            assert not engine.is_running
            seen = engine.stats().num_generation_tokens
            await anyio.sleep(0.05)
            assert engine.stats().num_generation_tokens == seen  # nothing steps now
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.run_engine_loop)
                final = [out async for out in stream][-1]
                tg.cancel_scope.cancel()
            # No step's outputs were lost to the cancellation.
            assert final.finished and len(final.outputs[0].token_ids) == 40


async def test_run_engine_loop_is_refused_when_the_engine_owns_its_loop() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            with pytest.raises(RuntimeError, match="start_engine_loop=False"):
                await engine.run_engine_loop()


async def test_check_health_errored_and_is_stopped_follow_the_engine_death() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(FakeModelError):
        async with open_engine_from_core(fake_core(fail_at_step=2), log_stats=False) as engine:
            await engine.check_health()
            assert not engine.errored and not engine.is_stopped
            with pytest.raises(EngineDeadError):
                async for _ in engine.generate(None, greedy(5), prompt_token_ids=[1]):
                    pass
            assert engine.errored and engine.is_stopped
            with pytest.raises(EngineDeadError) as dead:
                await engine.check_health()
            assert isinstance(dead.value.__cause__, FakeModelError)
    # Dead stays dead, after the block too.
    with pytest.raises(EngineDeadError, match="step 2"):
        await engine.check_health()


async def test_do_log_stats_logs_now(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.engine")
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_requests=False) as engine:
            await engine.do_log_stats()
        async with open_engine_from_core(fake_core(), log_requests=False, log_stats=False) as quiet:
            await quiet.do_log_stats()
    lines = [r.getMessage() for r in caplog.records if "throughput" in r.getMessage()]
    assert len(lines) == 1 and "Running: 0 reqs" in lines[0]


async def test_facade_methods_outside_the_block_raise_closed() -> None:
    engine = AsyncLLMEngine(False, False, model="m")
    with pytest.raises(EngineClosedError):
        await engine.check_health()
    with pytest.raises(EngineClosedError):
        await engine.run_engine_loop()
