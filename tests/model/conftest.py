"""Session fixtures of the model tests: the tiny-model zoo (see zoo.py)."""

from __future__ import annotations

import os

import pytest
import torch
from zoo import ModelZoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ModelZoo:
    """The session's tiny models, built lazily."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return ModelZoo(tmp_path_factory.mktemp("models"))
