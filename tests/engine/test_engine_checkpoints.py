"""Every async method of the public API is a checkpoint, as trio's are: a caller
that is already cancelled gets the cancellation, and an uncancelled one yields to
the scheduler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio.testing

from corral.engine import AsyncEngine, open_engine_from_core
from corral.testing import wait_idle
from tests.engine.engine_helpers import TIMEOUT, fake_core, greedy

pytestmark = pytest.mark.anyio

Call = Callable[[AsyncEngine], Awaitable[Any]]

CALLS: dict[str, Call] = {
    "abort": lambda engine: engine.abort("unknown"),
    "get_tokenizer": lambda engine: engine.get_tokenizer(),
    "get_model_config": lambda engine: engine.get_model_config(),
    "stream.aclose": lambda engine: engine.generate(None, greedy(3), prompt_token_ids=[1]).aclose(),
}


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_cancelled_caller_is_cancelled_at_the_call(name: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await CALLS[name](engine)
                pytest.fail(f"{name} did not checkpoint")
            assert scope.cancelled_caught
            await wait_idle(engine)


@pytest.mark.parametrize("name", list(CALLS))
async def test_the_call_is_a_schedule_point(name: str, anyio_backend: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            if anyio_backend == "trio":
                # trio shuffles the order of ready tasks, so ask trio itself.
                with trio.testing.assert_checkpoints():
                    await CALLS[name](engine)
            else:
                ran = False

                async def other() -> None:
                    nonlocal ran
                    ran = True

                async with anyio.create_task_group() as tg:
                    tg.start_soon(other)
                    await CALLS[name](engine)
                    assert ran  # asyncio runs ready tasks in order
            await wait_idle(engine)


async def test_a_cancelled_abort_aborts_nothing() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            async with engine.generate(None, greedy(4), "kept", prompt_token_ids=[1]) as stream:
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await engine.abort("kept")
                assert scope.cancelled_caught
                outs = [out async for out in stream]
            assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"


async def test_aclose_closes_even_when_cancelled() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            stream = engine.generate(None, greedy(50), prompt_token_ids=[1, 2, 3])
            await stream.__anext__()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await stream.aclose()
            assert scope.cancelled_caught and stream.finished
            await wait_idle(engine)
