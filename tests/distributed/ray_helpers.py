"""Ray for the tests: one local Ray instance per test session, and fake-model engines
that run in-process or with their core in a Ray actor.

Imported by tests/conftest.py as a plugin; Ray itself is imported only when a test
asks for the `ray_session` fixture.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from corral.core.engine_core import EngineCore
from corral.engine import AsyncEngine, open_engine_from_core, open_ray_engine
from corral.testing import FakeModelRunner, make_fake_core

if TYPE_CHECKING:
    from tests.model.zoo import ModelZoo


def fake_core(
    *,
    step_delay: float = 0.0,
    fail_at_step: int | None = None,
    fail_on_token: int | None = None,
    **config: Any,
) -> EngineCore:
    """`tests.engine.engine_helpers.fake_core`, from a module light enough for a Ray
    worker to import at once (no torch, no transformers)."""
    runner = FakeModelRunner(
        block_size=config.get("block_size", 4),
        num_kv_blocks=config.get("num_kv_blocks", 64),
        num_host_blocks=config.get("num_host_blocks", 32),
        step_delay=step_delay,
        fail_at_step=fail_at_step,
        fail_on_token=fail_on_token,
    )
    return make_fake_core(runner, **config)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for the whole session (starting one takes seconds).

    Safe to share: every engine kills its actors and placement group when its block
    is left, which the tests check.
    """
    import ray

    from corral.distributed.ray_utils import init_ray

    init_ray(None)
    yield
    ray.shutdown()


@pytest.fixture(params=[False, True], ids=["in_process", "engine_use_ray"])
def engine_use_ray(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Runs a test with the engine core in-process and in a Ray actor; afterwards no
    engine actor may be left alive."""
    if not request.param:
        yield False
        return
    request.getfixturevalue("ray_session")
    yield True
    assert live_engine_actors() == []
    assert live_placement_groups() == []


@asynccontextmanager
async def open_fake_engine(
    engine_use_ray: bool, *, data_parallel_size: int = 1, **options: Any
) -> AsyncIterator[AsyncEngine]:
    """An engine over `fake_core` (``options`` split between the core's and
    `open_engine_from_core`'s keyword arguments), with its core in-process or in Ray
    actors."""
    engine_keys = {"log_requests", "log_stats", "start_engine_loop", "max_log_len"}
    engine_options = {k: v for k, v in options.items() if k in engine_keys}
    core_options = {k: v for k, v in options.items() if k not in engine_keys}
    if engine_use_ray or data_parallel_size > 1:
        async with open_ray_engine(
            functools.partial(fake_core, **core_options),
            data_parallel_size=data_parallel_size,
            num_cpus=1,
            **engine_options,
        ) as engine:
            yield engine
    else:
        async with open_engine_from_core(fake_core(**core_options), **engine_options) as engine:
            yield engine


def live_engine_actors() -> list[str]:
    """Names of corral's engine actors alive in the cluster."""
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("corral-engine-")
    ]


def live_placement_groups() -> list[str]:
    """Ids of placement groups of the cluster not removed yet (corral's engines make
    the only ones in the test session)."""
    import ray

    return [
        group_id
        for group_id, group in ray.util.placement_group_table().items()
        if group["state"] != "REMOVED"
    ]


def zoo_engine_args(zoo: ModelZoo, model: str, **extra: Any) -> dict[str, Any]:
    """`open_engine` arguments for a zoo model: float32, a small cache, quiet."""
    return {
        "model": str(zoo.path(model)),
        "dtype": "float32",
        "num_kv_blocks": 128,
        "max_model_len": 256,
        "log_requests": False,
        "disable_log_stats": True,
        **extra,
    }
