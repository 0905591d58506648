"""Comparing beam search results, tolerant only at near-ties of the final scores."""

from __future__ import annotations

from collections.abc import Sequence

from corral.outputs import RequestOutput
from corral.testing.parity import NEAR_TIE

Hypothesis = tuple[tuple[int, ...], float]


def beam_score(tokens: Sequence[int], cumulative_logprob: float, length_penalty: float) -> float:
    """transformers' score of a finished hypothesis (its length counts the EOS token)."""
    return cumulative_logprob / len(tokens) ** length_penalty


def hypotheses(output: RequestOutput, length_penalty: float) -> list[Hypothesis]:
    return [
        (tuple(c.token_ids), beam_score(c.token_ids, c.cumulative_logprob, length_penalty))
        for c in output.outputs
    ]


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= NEAR_TIE * max(1.0, abs(a), abs(b))


def assert_same_beams(
    expected: Sequence[Hypothesis], actual: Sequence[Hypothesis], *, context: str
) -> None:
    """Same hypotheses in the same order with the same scores, except where the order
    (or which hypothesis makes the cut) turns on two scores within ``NEAR_TIE``."""
    assert len(expected) == len(actual), f"{context}: {len(expected)} vs {len(actual)} beams"
    want = dict(expected)
    got = dict(actual)
    for tokens, score in actual:
        if tokens in want:
            assert _near(want[tokens], score), (
                f"{context}: beam {list(tokens)} scores {score} here, {want[tokens]} expected"
            )
    cut_want = expected[-1][1]
    cut_got = actual[-1][1]
    for tokens, score in actual:
        if tokens not in want:
            assert _near(score, cut_want), (
                f"{context}: unexpected beam {list(tokens)} (score {score}); "
                f"expected {[list(t) for t, _ in expected]}"
            )
    for tokens, score in expected:
        if tokens not in got:
            assert _near(score, cut_got), (
                f"{context}: missing beam {list(tokens)} (score {score}); "
                f"got {[list(t) for t, _ in actual]}"
            )
    for rank, ((want_tokens, want_score), (got_tokens, _)) in enumerate(
        zip(expected, actual, strict=True)
    ):
        if want_tokens != got_tokens and got_tokens in want:
            assert _near(want_score, want[got_tokens]), (
                f"{context}: rank {rank} holds {list(got_tokens)}, expected {list(want_tokens)}"
            )
