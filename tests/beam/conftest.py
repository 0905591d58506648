"""Fixtures of the beam search tests: the tiny-model zoo (tests/model/zoo.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.model.zoo import ModelZoo


@pytest.fixture(scope="session")
def beam_zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelZoo]:
    """The tiny models, on one torch thread (see tests/model/conftest.py for why)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ModelZoo(tmp_path_factory.mktemp("beam-models"))
    torch.set_num_threads(threads)
