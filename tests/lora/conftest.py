"""Fixtures of the LoRA tests: the tiny-model zoo and PEFT adapters made on the spot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.lora.adapters import AdapterFactory
from tests.model.zoo import ModelZoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelZoo]:
    """The tiny models on one torch thread (see tests/model/conftest.py for why)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ModelZoo(tmp_path_factory.mktemp("lora-models"))
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def adapters(zoo: ModelZoo, tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    return AdapterFactory(zoo, tmp_path_factory.mktemp("adapters"))
