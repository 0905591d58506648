"""Public test helpers: a deterministic fake model, a fake detokenizer, a ready
engine core over them, waiting for an async engine to settle, and hypothesis
strategies. The async helpers and the strategies are imported on first use, so
that the rest works without anyio or hypothesis installed. Nothing here needs torch."""

from importlib import import_module
from typing import Any

from corral.testing.detokenizer import FakeDetokenizer as FakeDetokenizer
from corral.testing.fake_core import FAKE_EOS_TOKEN_ID as FAKE_EOS_TOKEN_ID
from corral.testing.fake_core import make_fake_core as make_fake_core
from corral.testing.fake_core import run_to_completion as run_to_completion
from corral.testing.fake_runner import FakeModelError as FakeModelError
from corral.testing.fake_runner import FakeModelRunner as FakeModelRunner

_LAZY = {
    "WorkloadRequest": "corral.testing.strategies",
    "sampling_params": "corral.testing.strategies",
    "workloads": "corral.testing.strategies",
    "is_idle": "corral.testing.engine",
    "wait_idle": "corral.testing.engine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.testing' has no attribute {name!r}")
    return getattr(import_module(module), name)
