"""Beam search's public value types (vLLM's ``BeamSearchParams`` and its outputs).

The search itself runs in the engine core (`corral.core.beam`); `LLM.beam_search`
is vLLM's current entry point to it, and ``SamplingParams(use_beam_search=True)``
the seed era's. docs/beam_search.md describes the semantics.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from corral.errors import NotSupportedError
from corral.outputs import FinishReason, Logprobs
from corral.sampling_params import RequestOutputKind, SamplingParams


def _at_least(minimum: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class BeamSearchParams:
    """Parameters of `LLM.beam_search` (vLLM's ``BeamSearchParams``).

    Attributes:
        beam_width: Number of beams kept at each step, and of sequences returned;
            at least 2 (one beam is greedy decoding: ``SamplingParams(temperature=0)``).
        max_tokens: Upper bound on generated tokens per sequence.
        ignore_eos: Keep generating past the end-of-sequence token.
        temperature: Must be 0: corral ranks beams by the model's log-probabilities
            and does not sample beams (a value above 0 raises NotSupportedError).
        length_penalty: A finished sequence scores
            ``cum_logprob / num_output_tokens ** length_penalty``.
        include_stop_str_in_output: Keep the end-of-sequence token's text in ``text``.
    """

    beam_width: int = attrs.field(validator=_at_least(2))
    max_tokens: int = attrs.field(validator=_at_least(1))
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def to_sampling_params(self) -> SamplingParams:
        """The engine core's form of the same search: ``best_of = n = beam_width``,
        ``early_stopping="never"``, final output only.

        Raises:
            NotSupportedError: ``temperature > 0``.
        """
        if self.temperature > 0.0:
            raise NotSupportedError(
                "BeamSearchParams.temperature > 0: corral ranks beams by the model's "
                "log-probabilities and does not sample them; use temperature=0"
            )
        return SamplingParams(
            n=self.beam_width,
            best_of=self.beam_width,
            use_beam_search=True,
            temperature=0.0,
            max_tokens=self.max_tokens,
            ignore_eos=self.ignore_eos,
            length_penalty=self.length_penalty,
            early_stopping="never",
            include_stop_str_in_output=self.include_stop_str_in_output,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )


@attrs.define(kw_only=True)
class BeamSearchSequence:
    """One returned beam (vLLM's ``BeamSearchSequence``).

    Attributes:
        tokens: The prompt's token ids followed by the generated ones.
        logprobs: Per generated token, its log-probability and the top ones asked for
            (empty unless asked).
        cum_logprob: Sum of the generated tokens' log-probabilities.
        text: The generated text.
        finish_reason: "stop" (EOS) or "length".
        stop_reason: Always None (kept for vLLM compatibility).
    """

    tokens: list[int]
    logprobs: list[Logprobs]
    cum_logprob: float
    text: str | None
    finish_reason: FinishReason | None
    stop_reason: int | str | None = None


@attrs.define
class BeamSearchOutput:
    """The beams of one prompt, best first (vLLM's ``BeamSearchOutput``)."""

    sequences: list[BeamSearchSequence]


def num_beam_candidates(beam_width: int, num_stop_token_ids: int) -> int:
    """How many candidates a beam step keeps across its beams: transformers'
    ``max(2, 1 + n_eos) * num_beams``, so that after every candidate that stops is
    set aside at least ``beam_width`` remain to continue."""
    return max(2, 1 + num_stop_token_ids) * beam_width
