"""Hypothesis-drawn request lifecycles against the async engine with the fake model.

Each example submits a few requests from concurrent tasks, at drawn moments, with
drawn ids (often duplicates) and a drawn way of consuming: read to the end, read
slowly, cancel after k outputs, abort explicitly after k, break after k, or leave
``async with`` after k. Invariants:

- every stream ends (a ``fail_after`` guard turns a hang into a failure);
- a duplicate id is refused only while another request holds it;
- every output is a prefix of the request's solo run; a request consumed to the
  end equals its solo run; an explicitly aborted one ends with "abort" and no token
  newer than what its consumer had already seen;
- once idle, every KV block is free and the core holds no request;
- after the engine's block, no task of the engine is left.
"""

from __future__ import annotations

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.engine import AsyncEngine, RequestStream
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import sampling_params, wait_idle
from tests.distributed.ray_helpers import open_fake_engine
from tests.engine.engine_helpers import TIMEOUT, completions, run_alone

BEHAVIOURS = ("consume", "slow", "cancel", "abort", "break", "leave")


@attrs.frozen
class Plan:
    request_id: str | None
    prompt: list[int]
    params: SamplingParams
    behaviour: str
    k: int
    start_delay: float


plans = st.builds(
    Plan,
    request_id=st.none() | st.sampled_from(["a", "b", "c"]),
    prompt=st.lists(st.integers(1, 63), min_size=1, max_size=20),
    params=sampling_params(max_tokens=10, max_best_of=2).filter(lambda p: p.n == p.best_of),
    behaviour=st.sampled_from(BEHAVIOURS),
    k=st.integers(0, 6),
    start_delay=st.sampled_from([0.0, 0.0, 0.001, 0.004]),
)


def assert_prefix_of(output: RequestOutput, alone: RequestOutput) -> None:
    by_index = {c.index: c.token_ids for c in alone.outputs}
    for c in output.outputs:
        assert c.token_ids == by_index[c.index][: len(c.token_ids)]


async def run_plan(engine: AsyncEngine, plan: Plan, holders: dict[str, int]) -> None:
    try:
        stream = engine.generate(None, plan.params, plan.request_id, prompt_token_ids=plan.prompt)
    except ValueError as exc:
        assert "already in use" in str(exc)
        assert plan.request_id is not None and holders.get(plan.request_id, 0) > 0
        return
    rid = stream.request_id
    holders[rid] = holders.get(rid, 0) + 1
    # Handed over in a list so that `consume` can drop the last reference ("break").
    handle = [stream]
    del stream
    try:
        await consume(engine, plan, handle)
    finally:
        holders[rid] -= 1


async def consume(engine: AsyncEngine, plan: Plan, handle: list[RequestStream]) -> None:
    alone = run_alone(plan.prompt, plan.params)
    stream = handle.pop()
    outs: list[RequestOutput] = []
    if plan.behaviour == "break":
        async for out in stream:
            outs.append(out)
            if len(outs) > plan.k:
                break
        del stream
    elif plan.behaviour == "cancel":
        with anyio.CancelScope() as scope:
            async with stream:
                async for out in stream:
                    outs.append(out)
                    if len(outs) > plan.k:
                        scope.cancel()
    else:
        seen_at_abort = None
        async with stream:
            async for out in stream:
                outs.append(out)
                if plan.behaviour == "slow":
                    await anyio.sleep(0.003)
                if len(outs) > plan.k and not out.finished and seen_at_abort is None:
                    if plan.behaviour == "leave":
                        break
                    if plan.behaviour == "abort":
                        seen_at_abort = out
                        await engine.abort(out.request_id)
        if seen_at_abort is not None:
            final = outs[-1]
            assert final.finished and outs[-2] is seen_at_abort
            assert [c.token_ids for c in final.outputs] == [
                c.token_ids for c in seen_at_abort.outputs
            ]
            assert all(c.finish_reason is not None for c in final.outputs)
            assert any(c.finish_reason == "abort" for c in final.outputs)
    for out in outs:
        assert_prefix_of(out, alone)
    assert all(not out.finished for out in outs[:-1])
    if outs and outs[-1].finished:
        if not any(c.finish_reason == "abort" for c in outs[-1].outputs):
            assert completions(outs[-1]) == completions(alone)
    if plan.behaviour in ("consume", "slow"):
        assert outs[-1].finished
        assert completions(outs[-1]) == completions(alone)


async def run_scenario(scenario: list[Plan], step_delay: float, engine_use_ray: bool) -> None:
    before = {task.id for task in anyio.get_running_tasks()}
    holders: dict[str, int] = {}
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(
            engine_use_ray, step_delay=step_delay, log_requests=False, log_stats=False
        ) as engine:

            async def start(plan: Plan) -> None:
                await anyio.sleep(plan.start_delay)
                await run_plan(engine, plan, holders)

            async with anyio.create_task_group() as tg:
                for plan in scenario:
                    tg.start_soon(start, plan)
            await wait_idle(engine)
            assert not engine._core.has_unfinished_requests()
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert {task.id for task in anyio.get_running_tasks()} == before


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_random_request_lifecycles_keep_the_invariants(backend: str, engine_use_ray: bool) -> None:
    # An actor takes about a second to start: fewer scenarios with the core in Ray.
    @settings(max_examples=3 if engine_use_ray else 60)
    @given(
        scenario=st.lists(plans, min_size=1, max_size=8),
        step_delay=st.sampled_from([0.0, 0.001]),
    )
    def check(scenario: list[Plan], step_delay: float) -> None:
        anyio.run(run_scenario, scenario, step_delay, engine_use_ray, backend=backend)

    check()
