"""data_parallel_size: replicas in Ray actors give what one engine gives, and the
router keeps a shared first block on one replica."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from corral.engine import AsyncEngine, open_engine
from corral.sampling_params import SamplingParams
from corral.testing import wait_idle
from tests.distributed.ray_helpers import (
    live_engine_actors,
    live_placement_groups,
    open_fake_engine,
)
from tests.engine.engine_helpers import greedy
from tests.server.server_helpers import build_tiny_model

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session")]

TIMEOUT = 120.0
# Distinct first tokens: no two requests share a first KV block, so the router
# spreads them by load. Random weights of range 0.5 give peaked logits, far from
# ties, so that seeded samples are the same whatever the batch (see DESIGN.md).
PROMPTS = [[5 + i, 40 + i, 7, 9, 11] for i in range(6)]
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 128, "num_kv_blocks": 64, "block_size": 4}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama-dp")
    build_tiny_model(folder)
    return folder


async def run_all(engine: AsyncEngine) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in PROMPTS]

    async def one(i: int) -> None:
        params = SamplingParams(temperature=1.0, seed=100 + i, max_tokens=8, ignore_eos=True)
        async with engine.generate(None, params, prompt_token_ids=PROMPTS[i]) as stream:
            async for out in stream:
                results[i] = out.outputs[0].token_ids

    async with anyio.create_task_group() as tg:
        for i in range(len(PROMPTS)):
            tg.start_soon(one, i)
    return results


async def test_two_replicas_give_the_outputs_of_one_engine(tiny_model: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine(
            model=str(tiny_model), disable_log_stats=True, **ENGINE_ARGS
        ) as engine:
            expected = await run_all(engine)
        async with open_engine(
            model=str(tiny_model), data_parallel_size=2, disable_log_stats=True, **ENGINE_ARGS
        ) as engine:
            assert len(live_engine_actors()) == 2
            got = await run_all(engine)
            per_replica = engine.replica_stats()
            await wait_idle(engine)
    assert got == expected
    assert all(len(tokens) == 8 for tokens in got)
    assert len(per_replica) == 2
    assert all(s.num_generation_tokens > 0 for s in per_replica.values())
    assert live_engine_actors() == []
    assert live_placement_groups() == []


async def test_requests_sharing_a_first_block_go_to_one_replica() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(
            True, data_parallel_size=2, step_delay=0.002, log_stats=False
        ) as engine:
            shared = [9, 8, 7, 6]  # one full block of the fake core (block_size 4)
            streams = [
                engine.generate(None, greedy(4), prompt_token_ids=[*shared, 20 + i])
                for i in range(4)
            ]
            owners = {
                r.name
                for s in streams
                for r in engine._replicas
                if s._state.request_id in r.loop.live
            }
            assert len(owners) == 1
            other = engine.generate(None, greedy(4), prompt_token_ids=[1, 2, 3, 4, 5])
            assert other._state.request_id not in engine._replicas[0].loop.live or owners != {
                engine._replicas[0].name
            }
            for stream in [*streams, other]:
                async with stream:
                    assert [o.finished async for o in stream][-1]
            total = engine.stats()
            assert total.num_total_blocks == sum(
                s.num_total_blocks for s in engine.replica_stats().values()
            )
            await wait_idle(engine)
