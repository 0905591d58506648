"""The engine loop: idle without CPU, responsive while stepping, owned by its block."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

import corral._compose
from corral.config import AsyncEngineArgs
from corral.engine import open_engine, open_engine_from_core
from tests.engine.engine_helpers import TIMEOUT, fake_core, greedy

pytestmark = pytest.mark.anyio


async def test_idle_engine_uses_no_cpu() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            async for _ in engine.generate(None, greedy(3), prompt_token_ids=[1]):
                pass
            start = time.process_time()
            await anyio.sleep(0.5)
            used = time.process_time() - start
    assert used < 0.05, f"idle engine used {used:.3f} s of CPU in 0.5 s"


async def _max_tick_gap(work: Any) -> float:
    """Run `work` while a 5 ms ticker runs; return the longest gap between ticks."""
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await work()
        tg.cancel_scope.cancel()
    return max(gaps)


async def test_event_loop_stays_responsive_during_a_slow_step() -> None:
    step = 0.3
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(step_delay=step), log_stats=False) as engine:

            async def work() -> None:
                async for _ in engine.generate(None, greedy(3), prompt_token_ids=[1]):
                    pass

            started = time.perf_counter()
            gap = await _max_tick_gap(work)
            assert time.perf_counter() - started >= 3 * step
    assert gap < step / 3, f"the event loop stalled for {gap:.3f} s during {step} s steps"


async def test_model_loads_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    load_time = 0.3
    seen_args = []

    def slow_factory(args: AsyncEngineArgs) -> tuple[Any, Any, Any]:
        seen_args.append(args)
        time.sleep(load_time)
        return fake_core(), None, None

    monkeypatch.setattr(corral._compose, "build_engine_core", slow_factory)

    async def work() -> None:
        async with open_engine(model="unused", log_requests=False) as engine:
            assert engine.is_running
            outs = [out async for out in engine.generate(None, greedy(2), prompt_token_ids=[1])]
            assert outs[-1].finished

    with anyio.fail_after(TIMEOUT):
        gap = await _max_tick_gap(work)
    assert gap < load_time / 3
    assert seen_args[0].model == "unused" and seen_args[0].log_requests is False


async def test_no_task_outlives_the_engine_block() -> None:
    before = {task.id for task in anyio.get_running_tasks()}
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(step_delay=0.01), log_stats=False) as engine:
            assert len(anyio.get_running_tasks()) > len(before)
            engine.generate(None, greedy(50), "left-running", prompt_token_ids=[1]).close()
            stream = engine.generate(None, greedy(50), prompt_token_ids=[2])
            await stream.__anext__()
    after = {task.id for task in anyio.get_running_tasks()}
    assert after == before
    stream.close()


async def test_exit_waits_for_the_step_in_flight() -> None:
    core = fake_core(step_delay=0.2)
    runner = core.runner
    execute = runner.execute
    completed: list[int] = []

    def recording_execute(scheduler_output: Any) -> Any:
        result = execute(scheduler_output)
        completed.append(runner.num_steps)
        return result

    runner.execute = recording_execute  # type: ignore[method-assign]
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(core, log_stats=False) as engine:
            stream = engine.generate(None, greedy(50), prompt_token_ids=[1])
            await runner.wait_for_step(2, started=True)
        # Every step that started has returned before the block was left.
        assert len(completed) == runner.num_steps
    assert not core.has_unfinished_requests()
    stream.close()


async def test_requests_are_logged_in_one_summary_line_without_the_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="corral.engine")
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            async for _ in engine.generate(
                "abcdefgh", greedy(2), "logged", prompt_token_ids=[1, 2, 3, 4, 5]
            ):
                pass
            stream = engine.generate(None, greedy(50), "dropped", prompt_token_ids=[1])
            stream.close()
    messages = [r.getMessage() for r in caplog.records]
    (logged,) = [m for m in messages if "logged" in m]
    assert logged.startswith("Request logged: prompt 5 tokens, max_tokens 2, finish length")
    assert "abc" not in logged
    (dropped,) = [m for m in messages if "dropped" in m]
    assert dropped.startswith("Request dropped: prompt 1 tokens, max_tokens 50, aborted after")


async def test_verbose_request_logs_show_the_prompt_cut_at_max_log_len(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="corral.engine")
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(), max_log_len=3, log_requests_verbose=True, log_stats=False
        ) as engine:
            async for _ in engine.generate(
                "abcdefgh", greedy(2), "logged", prompt_token_ids=[1, 2, 3, 4, 5]
            ):
                pass
    messages = [r.getMessage() for r in caplog.records]
    received = next(m for m in messages if m.startswith("Received request logged"))
    assert "'abc'" in received and "[1, 2, 3]" in received and "abcd" not in received
    assert any(m.startswith("Request logged: prompt 5 tokens") for m in messages)


async def test_no_request_logs_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.engine")
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_requests=False, log_stats=False) as e:
            async for _ in e.generate(None, greedy(2), prompt_token_ids=[1]):
                pass
    assert not caplog.records


async def test_stats_are_logged_periodically(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corral.engine")
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(step_delay=0.01), log_requests=False, stats_interval=0.05
        ) as engine:
            started = time.monotonic()
            async for _ in engine.generate(None, greedy(30), prompt_token_ids=[1]):
                pass
            elapsed = time.monotonic() - started
    lines = [r.getMessage() for r in caplog.records if "generation throughput" in r.getMessage()]
    # One line per interval of activity at most (30 steps of >= 10 ms: at least 0.3 s).
    assert 2 <= len(lines) <= elapsed / 0.05 + 1
    assert "Running: 1 reqs" in lines[0] and "KV cache usage" in lines[0]


async def test_cancelling_the_whole_engine_block_ends_everything() -> None:
    core = fake_core(step_delay=0.005)
    before = {task.id for task in anyio.get_running_tasks()}
    with anyio.fail_after(TIMEOUT):
        with anyio.move_on_after(0.1) as scope:
            async with open_engine_from_core(core, log_stats=False) as engine:
                async with anyio.create_task_group() as tg:
                    for i in range(4):

                        async def consume(i: int = i) -> None:
                            params = greedy(100)
                            async for _ in engine.generate(None, params, prompt_token_ids=[i + 1]):
                                await anyio.sleep(0.001)

                        tg.start_soon(consume)
    assert scope.cancelled_caught
    assert {task.id for task in anyio.get_running_tasks()} == before
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not core.has_unfinished_requests()
