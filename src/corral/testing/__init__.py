"""Public test helpers: a deterministic fake model, a fake detokenizer, a ready
engine core over them, and hypothesis strategies (imported on first use, so that
the rest works without hypothesis installed). Nothing here needs torch."""

from typing import Any

from corral.testing.detokenizer import FakeDetokenizer as FakeDetokenizer
from corral.testing.fake_core import FAKE_EOS_TOKEN_ID as FAKE_EOS_TOKEN_ID
from corral.testing.fake_core import make_fake_core as make_fake_core
from corral.testing.fake_core import run_to_completion as run_to_completion
from corral.testing.fake_runner import FakeModelError as FakeModelError
from corral.testing.fake_runner import FakeModelRunner as FakeModelRunner

_STRATEGIES = ("WorkloadRequest", "sampling_params", "workloads")


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        from corral.testing import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module 'corral.testing' has no attribute {name!r}")
