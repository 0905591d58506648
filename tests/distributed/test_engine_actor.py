"""engine_use_ray: the core in a Ray actor, the front door in the caller's task group."""

from __future__ import annotations

import anyio
import pytest

from corral.testing import wait_idle
from tests.distributed.ray_helpers import (
    live_engine_actors,
    live_placement_groups,
    open_fake_engine,
)
from tests.engine.engine_helpers import TIMEOUT, greedy, run_alone

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session")]


async def test_actor_engine_streams_what_the_core_computes_alone() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_fake_engine(True, log_stats=False) as engine:
            assert len(live_engine_actors()) == 1
            async with engine.generate(None, greedy(7), prompt_token_ids=[3, 4, 5]) as stream:
                outs = [out async for out in stream]
            await wait_idle(engine)
    assert outs[-1].finished
    assert outs[-1].outputs[0].token_ids == run_alone([3, 4, 5], greedy(7)).outputs[0].token_ids
    assert live_engine_actors() == []
    assert live_placement_groups() == []
