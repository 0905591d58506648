"""The one comparison of greedy tokens with a reference, tolerant only at near-ties.

torch's CPU matmul is not batch-invariant (the same row differs in the last bits by
batch size and position), so two correct runs may choose different tokens where the
two best candidates are practically tied. `compare_tokens` (against a reference's
logits) and `compare_with_logprobs` (against a first corral run's top logprobs)
accept a divergence only at such a near-tie and stop comparing there; any other
divergence fails. Needs torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NEAR_TIE = 1e-4


def is_near_tie(reference_logits: torch.Tensor, expected: int, actual: int) -> bool:
    """Whether choosing ``actual`` instead of ``expected`` can be a rounding effect.

    True when the reference's top two logits are within ``NEAR_TIE`` relative, or the
    two tokens' reference logprobs are within ``NEAR_TIE``.
    """
    logits = reference_logits.double()
    top2 = logits.topk(2).values
    if float(top2[0] - top2[1]) <= NEAR_TIE * max(float(top2[0].abs()), 1e-30):
        return True
    logprobs = logits.log_softmax(-1)
    return abs(float(logprobs[expected] - logprobs[actual])) <= NEAR_TIE


def compare_tokens(
    expected: Sequence[int],
    actual: Sequence[int],
    reference_logits: Sequence[torch.Tensor],
    *,
    context: str = "",
) -> int:
    """Compare two greedy token sequences; return how many leading tokens agree.

    Args:
        expected: The reference's tokens.
        actual: corral's tokens.
        reference_logits: The reference's logits at each step of ``expected``.
        context: Names the case in failure messages.

    Raises:
        AssertionError: when the sequences part at a step that is not a near-tie, or
            when they agree but have different lengths without a near-tie (one run
            stopped early).
    """

    def judge(step: int, want: int, got: int) -> str | None:
        if is_near_tie(reference_logits[step], want, got):
            return None
        logprobs = reference_logits[step].double().log_softmax(-1)
        return (
            f"expected {want} (logprob {float(logprobs[want]):.6f}), "
            f"got {got} (logprob {float(logprobs[got]):.6f})"
        )

    return _agreeing_prefix(expected, actual, judge, context)


def compare_with_logprobs(
    expected: Sequence[int],
    actual: Sequence[int],
    expected_logprobs: Sequence[dict[int, float]],
    *,
    context: str = "",
) -> int:
    """Compare two corral greedy runs; the first run's top logprobs judge near-ties.

    The same rule as `compare_tokens` in its logprob form: at a divergence, the
    token the second run chose must be among the first run's top logprobs (ask for
    ``logprobs >= 1``) within ``NEAR_TIE`` of the chosen one. Returns the agreeing
    prefix length.

    Raises:
        AssertionError: at any other divergence, or on different lengths.
    """

    def judge(step: int, want: int, got: int) -> str | None:
        top = expected_logprobs[step]
        if got in top and abs(top[want] - top[got]) <= NEAR_TIE:
            return None
        return f"expected {want}, got {got}; first run's logprobs there: {top}"

    return _agreeing_prefix(expected, actual, judge, context)


def _agreeing_prefix(
    expected: Sequence[int],
    actual: Sequence[int],
    judge: Callable[[int, int, int], str | None],
    context: str,
) -> int:
    """The walk both comparisons share. ``judge(step, want, got)`` returns None for a
    near-tie, else what to say about the divergence."""
    for step, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want == got:
            continue
        problem = judge(step, want, got)
        if problem is None:
            return step
        raise AssertionError(
            f"{context}: token {step} differs: {problem}; "
            f"expected {list(expected)}, got {list(actual)}"
        )
    if len(expected) != len(actual):
        raise AssertionError(
            f"{context}: lengths differ ({len(expected)} vs {len(actual)}) with equal prefixes"
        )
    return len(expected)
