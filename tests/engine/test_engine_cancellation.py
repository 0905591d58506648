"""Every way a consumer can stop early aborts its request and frees its blocks, with
the core in-process and in a Ray actor (the `engine_use_ray` fixture)."""

from __future__ import annotations

import gc

import anyio
import pytest

from corral.engine import open_engine_from_core
from corral.testing import wait_idle
from tests.distributed.ray_helpers import open_fake_engine
from tests.engine.engine_helpers import TIMEOUT, fake_core, greedy

pytestmark = pytest.mark.anyio

PROMPT = list(range(1, 30))  # 8 blocks of 4 tokens once generation starts


async def test_move_on_after_aborts_the_request(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, step_delay=0.002, log_stats=False) as engine:
            outs = []
            with anyio.move_on_after(TIMEOUT) as scope:
                async with engine.generate(None, greedy(90), prompt_token_ids=PROMPT) as stream:
                    async for out in stream:
                        outs.append(out)
                        if len(outs) == 2:
                            # Expire the deadline now rather than race a wall-clock one.
                            scope.deadline = anyio.current_time()
            assert scope.cancelled_caught
            assert len(outs) == 2 and not outs[-1].finished
            await wait_idle(engine)
            assert engine.stats().num_unfinished_requests == 0


async def test_cancelling_a_task_group_aborts_all_its_requests(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, step_delay=0.002, log_stats=False) as engine:
            counts = [0] * 4
            all_read_two = anyio.Event()

            async def consume(i: int) -> None:
                async for _ in engine.generate(None, greedy(90), f"r{i}", prompt_token_ids=[i + 1]):
                    counts[i] += 1
                    if min(counts) == 2:
                        all_read_two.set()

            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(consume, i)
                await all_read_two.wait()
                tg.cancel_scope.cancel()
            assert all(c < 90 for c in counts)
            await wait_idle(engine)
            assert engine.stats().num_unfinished_requests == 0


async def test_leaving_async_with_early_aborts(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, log_stats=False) as engine:
            async with engine.generate(None, greedy(90), "early", prompt_token_ids=PROMPT) as s:
                await s.__anext__()
                assert engine.stats().num_running == 1
            assert s.finished
            await wait_idle(engine)
            # The id is free again once the stream is closed.
            async with engine.generate(None, greedy(1), "early", prompt_token_ids=PROMPT) as s2:
                assert [o.finished async for o in s2] == [True]


async def test_break_out_of_bare_async_for_aborts(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, log_stats=False) as engine:
            async for out in engine.generate(None, greedy(90), prompt_token_ids=PROMPT):
                if len(out.outputs[0].token_ids) == 2:
                    break
            await wait_idle(engine)
            assert engine.stats().num_unfinished_requests == 0


async def test_aclose_aborts(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, log_stats=False) as engine:
            stream = engine.generate(None, greedy(90), prompt_token_ids=PROMPT)
            await stream.__anext__()
            await stream.aclose()
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
            await wait_idle(engine)


async def test_garbage_collected_stream_aborts_without_warning(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, log_stats=False) as engine:
            stream = engine.generate(None, greedy(90), prompt_token_ids=PROMPT)
            await stream.__anext__()
            del stream
            gc.collect()
            await wait_idle(engine)
            assert engine.stats().num_unfinished_requests == 0


async def test_unread_streams_do_not_grow() -> None:
    """A stream nobody reads holds one pending wake-up and the latest snapshot only."""
    with anyio.fail_after(TIMEOUT):
        core = fake_core()
        async with open_engine_from_core(core, log_stats=False) as engine:
            stream = engine.generate(None, greedy(40), prompt_token_ids=[1, 2, 3])
            async with stream:
                # One token per step: step k made token k.
                for step in range(1, 41):
                    await core.runner.wait_for_step(step)
                    assert stream._state.receive.statistics().current_buffer_used <= 1
                # The step that made the 40th token may not be dispatched yet: at most
                # that one snapshot precedes the final one.
                outs = [out async for out in stream]
                assert len(outs) <= 2
                assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 40


async def test_slow_consumer_sees_coalesced_snapshots_and_does_not_stall_others(
    engine_use_ray: bool,
) -> None:
    # Steps of 20 ms leave a fast consumer ample time to read each snapshot before
    # the next one is stored, even on a loaded machine; the slow one reads every 100 ms.
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, step_delay=0.02, log_stats=False) as engine:
            slow_lengths: list[int] = []
            fast_lengths: list[int] = []

            async def slow() -> None:
                async for out in engine.generate(None, greedy(30), prompt_token_ids=[1, 2]):
                    slow_lengths.append(len(out.outputs[0].token_ids))
                    await anyio.sleep(0.1)

            async def fast() -> None:
                async for out in engine.generate(None, greedy(30), prompt_token_ids=[3, 4]):
                    fast_lengths.append(len(out.outputs[0].token_ids))

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                tg.start_soon(fast)
            assert fast_lengths == list(range(1, 31))  # a fast consumer sees every step
            assert slow_lengths[-1] == 30
            assert len(slow_lengths) < 30  # the slow one skipped snapshots
            assert slow_lengths == sorted(set(slow_lengths))


async def test_exit_aborts_live_requests_and_frees_the_cache(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as outer:
            async with open_fake_engine(
                engine_use_ray, step_delay=0.002, log_stats=False
            ) as engine:
                stream = engine.generate(None, greedy(90), prompt_token_ids=PROMPT)
                await stream.__anext__()

                async def read_elsewhere() -> None:
                    async with stream:
                        outs = [out async for out in stream]
                    assert outs[-1].finished
                    assert outs[-1].outputs[0].finish_reason == "abort"

                outer.start_soon(read_elsewhere)
    # The last snapshot is the one after the aborts were applied on exit.
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not engine._core.has_unfinished_requests()


async def test_id_of_a_broken_off_stream_is_free_at_once(engine_use_ray: bool) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, log_stats=False) as engine:
            async for _ in engine.generate(None, greedy(90), "brk", prompt_token_ids=PROMPT):
                break
            async with engine.generate(None, greedy(2), "brk", prompt_token_ids=[1]) as stream:
                outs = [out async for out in stream]
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 2
            await wait_idle(engine)


async def test_stream_collected_in_another_thread_is_aborted_by_the_loop(
    engine_use_ray: bool,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(engine_use_ray, step_delay=0.002, log_stats=False) as engine:
            holder = [engine.generate(None, greedy(90), prompt_token_ids=PROMPT)]
            await holder[0].__anext__()
            # The last reference dies in a worker thread, as it would if the garbage
            # collector ran there: the finalizer must only hand the request over.
            await anyio.to_thread.run_sync(holder.clear)
            await wait_idle(engine)
            assert engine.stats().num_unfinished_requests == 0
            assert engine.is_running
