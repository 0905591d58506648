"""The router and the statistics of data-parallel replicas (no Ray needed)."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest

from corral._engine.loop import EngineLoop
from corral._engine.replicas import Replica, Router, aggregate_stats
from corral._engine.stream import RequestState
from corral.sampling_params import SamplingParams
from tests.distributed.ray_helpers import fake_core


@pytest.fixture(autouse=True)
def _end_states() -> Iterator[None]:
    """Requests submitted by a test end with it (their streams are closed)."""
    yield
    while _STATES:
        _STATES.pop().end()


_STATES: list[RequestState] = []


def replicas(count: int) -> list[Replica]:
    out = []
    for i in range(count):
        core = fake_core()
        loop = EngineLoop(core, on_finished=lambda *_: None, on_step=lambda: None)
        out.append(Replica(str(i), core, loop, core.config, True))
    return out


def submit(replica: Replica, request_id: str, prompt: list[int], max_tokens: int) -> None:
    params = SamplingParams(max_tokens=max_tokens)
    state = RequestState(request_id, None, prompt, params, None, 0.0)
    _STATES.append(state)
    replica.loop.submit(state)


def test_fewest_outstanding_tokens_wins() -> None:
    a, b = replicas(2)
    submit(a, "x", [1, 2, 3], 50)
    assert Router([a, b]).choose([7, 8]) is b


def test_a_shared_first_block_sticks_until_its_replica_is_overloaded() -> None:
    a, b = replicas(2)
    router = Router([a, b])
    prompt = [9, 8, 7, 6, 5]  # the fake core's blocks hold 4 tokens
    assert router.choose(prompt) is a
    submit(a, "first", prompt, 10)
    assert router.choose([9, 8, 7, 6, 1]) is a  # same first block, a not overloaded
    budget = a.config.max_num_batched_tokens
    submit(a, "huge", [1], 2 * budget + 100)
    assert router.choose([9, 8, 7, 6, 2]) is b  # overloaded: the least loaded takes it


def test_dead_replicas_get_nothing() -> None:
    a, b = replicas(2)
    a.loop.die(RuntimeError("gone"))
    assert Router([a, b]).choose([1]) is b
    b.loop.die(RuntimeError("gone"))
    assert Router([a, b]).choose([1]) is None


def test_aggregate_stats_add_up_and_usage_is_over_all_blocks() -> None:
    one = fake_core().stats()
    busy = attrs.evolve(one, num_free_blocks=one.num_total_blocks // 2, num_running=3)
    total = aggregate_stats([one, busy])
    assert total.num_total_blocks == 2 * one.num_total_blocks
    assert total.num_running == 3
    assert total.kv_cache_usage == 0.25
    # Per-adapter counts add up key by key.
    a = attrs.evolve(one, lora_running={1: 2}, lora_waiting={2: 1})
    b = attrs.evolve(one, lora_running={1: 1, 3: 4})
    merged = aggregate_stats([a, b])
    assert merged.lora_running == {1: 3, 3: 4}
    assert merged.lora_waiting == {2: 1}
