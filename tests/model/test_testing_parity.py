"""`corral.testing`'s near-tie comparison: a divergence passes only at a near-tie."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import corral.testing
from corral.testing import NEAR_TIE, compare_tokens, compare_with_logprobs, is_near_tie

VOCAB = 5


def logits_with(top: int, runner_up: int, gap: float) -> torch.Tensor:
    """Logits whose best token is ``top``, ahead of ``runner_up`` by ``gap``."""
    logits = torch.zeros(VOCAB)
    logits[top] = 10.0
    logits[runner_up] = 10.0 - gap
    return logits


def test_identical_runs_agree_on_every_token() -> None:
    logits = [logits_with(1, 2, 5.0)] * 3
    assert compare_tokens([1, 1, 1], [1, 1, 1], logits) == 3


def test_a_divergence_at_a_near_tie_stops_the_comparison_there() -> None:
    logits = [logits_with(1, 2, 5.0), logits_with(3, 4, 10.0 * NEAR_TIE / 2)]
    assert compare_tokens([1, 3, 0], [1, 4, 2], logits) == 1


def test_a_divergence_away_from_a_near_tie_fails_naming_the_step() -> None:
    logits = [logits_with(1, 2, 5.0), logits_with(3, 4, 1.0)]
    with pytest.raises(AssertionError, match="case: token 1 differs: expected 3"):
        compare_tokens([1, 3], [1, 4], logits, context="case")


def test_equal_prefixes_of_different_lengths_fail() -> None:
    logits = [logits_with(1, 2, 5.0)] * 3
    with pytest.raises(AssertionError, match="lengths differ"):
        compare_tokens([1, 1, 1], [1, 1], logits)


def test_near_tie_by_logprob_when_the_tokens_are_not_the_top_two() -> None:
    logits = torch.tensor([10.0, 0.0, 5.0, 5.0 - NEAR_TIE / 2, -1.0])
    assert is_near_tie(logits, 2, 3)
    assert not is_near_tie(logits, 2, 1)


def test_logprob_form_accepts_a_near_tie_among_the_first_runs_top_logprobs() -> None:
    tops = [{1: -0.1}, {3: -0.70, 4: -0.70 - NEAR_TIE / 2}]
    assert compare_with_logprobs([1, 3, 3], [1, 4, 0], tops) == 1


@pytest.mark.parametrize(
    "tops", [[{3: -0.1, 4: -2.0}], [{3: -0.1}]], ids=["far-apart", "not-in-top"]
)
def test_logprob_form_rejects_any_other_divergence(tops: list[dict[int, float]]) -> None:
    with pytest.raises(AssertionError, match="token 0 differs: expected 3, got 4"):
        compare_with_logprobs([3], [4], tops)


def test_logprob_form_rejects_different_lengths() -> None:
    with pytest.raises(AssertionError, match="lengths differ"):
        compare_with_logprobs([3, 3], [3], [{3: -0.1}, {3: -0.1}])


def test_the_comparison_is_exported_lazily() -> None:
    assert corral.testing.compare_tokens is compare_tokens
    code = (
        "import sys; import corral.testing; "
        "assert 'corral.testing.parity' not in sys.modules; "
        "corral.testing.compare_tokens; "
        "assert 'corral.testing.parity' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
