"""Public test helpers: a deterministic fake model, a fake detokenizer, a ready
engine core over them, waiting for an async engine to settle, hypothesis strategies,
and the near-tie comparison of greedy tokens (`compare_tokens`,
`compare_with_logprobs`, `is_near_tie`, `NEAR_TIE`).

The async helpers, the strategies and the comparison are imported on first use, so
that the rest works without anyio, hypothesis or torch installed.

torch's CPU matmul is not batch-invariant: two correct runs of the same greedy
request can part where the two best tokens are within rounding of each other. A test
that compares corral's tokens with a reference (``transformers``, or corral run
alone) should use `compare_tokens` or `compare_with_logprobs`, which accept a
divergence only at such a near-tie, stop comparing there and return how many leading
tokens agreed; any other divergence raises AssertionError.
"""

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
    "NEAR_TIE": "corral.testing.parity",
    "compare_tokens": "corral.testing.parity",
    "compare_with_logprobs": "corral.testing.parity",
    "is_near_tie": "corral.testing.parity",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.testing' has no attribute {name!r}")
    return getattr(import_module(module), name)
