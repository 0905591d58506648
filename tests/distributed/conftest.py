"""Fixtures of the tests that run real tiny models in engine actors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.model.zoo import ModelZoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelZoo]:
    """The tiny models, built on one torch thread (the in-process engines' share)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ModelZoo(tmp_path_factory.mktemp("distributed-models"))
    torch.set_num_threads(threads)


@pytest.fixture(
    params=[{"engine_use_ray": True}, {"data_parallel_size": 2}],
    ids=["engine_use_ray", "data_parallel_2"],
)
def actor_args(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Engine arguments that put the core in Ray actors: one, or two replicas."""
    return dict(request.param)


@pytest.fixture(scope="session")
def adapters(zoo: ModelZoo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """PEFT adapters of the zoo's models (an `AdapterFactory`; PEFT loads only here)."""
    from tests.lora.adapters import AdapterFactory

    return AdapterFactory(zoo, tmp_path_factory.mktemp("distributed-adapters"))
