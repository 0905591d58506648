"""Session fixtures of the model tests: the tiny-model zoo (see zoo.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.model.zoo import ModelZoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelZoo]:
    """The session's tiny models, built lazily.

    Runs torch on one thread: these models are too small to gain from a second one,
    and on a shared machine OpenMP threads waiting on a descheduled peer made every
    op about ten times slower (measured on the 2-core CI box under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ModelZoo(tmp_path_factory.mktemp("models"))
    torch.set_num_threads(threads)
