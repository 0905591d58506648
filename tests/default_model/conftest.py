"""Fixtures for the embedded default model: its training script and the loaded checkpoint."""

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from corral.default_model import DEFAULT_MODEL_PATH

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_default_model.py"


@pytest.fixture(scope="session")
def script() -> ModuleType:
    """The training script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The shipped tokenizer, loaded the way users load it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_MODEL_PATH)


@pytest.fixture(scope="session")
def model() -> Any:
    """The shipped model in float32, loaded the way users load it."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_PATH, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def vocabulary(script: ModuleType) -> frozenset[str]:
    """Every word the story grammar can write."""
    return script.vocabulary()
