"""`SamplingParams`: how a request's tokens are chosen and when its generation stops.

Field names, defaults and validation follow vLLM's ``SamplingParams`` so that code
written for vLLM carries over. Greedy sampling is ``temperature == 0``; it ignores
``top_p``, ``top_k`` and ``min_p`` (they are reset to their neutral values) and allows
only ``best_of == 1``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from corral.errors import NotSupportedError
from corral.structured_outputs import StructuredOutputsParams

LogitsProcessor = Callable[[list[int], Any], Any]
"""``(output_token_ids, logits) -> logits``: called on a sequence's next-token logits
(a 1-D tensor over the vocabulary) before sampling, like vLLM v0's processors."""

_SAMPLING_EPS = 1e-5


class RequestOutputKind(enum.Enum):
    """What each output of a request's stream holds (vLLM's ``RequestOutputKind``).

    CUMULATIVE: everything generated so far (the default). DELTA: only what is new
    since the stream's previous output; a consumer that reads slowly gets the
    concatenation of everything it missed, so concatenating the outputs' text,
    token ids and logprobs gives the cumulative result. FINAL_ONLY: one output,
    the final one.
    """

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


def _to_str_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _to_int_tuple(value: Sequence[int] | None) -> tuple[int, ...]:
    return () if value is None else tuple(int(v) for v in value)


def _to_str_tuple_unique(value: Sequence[str] | None) -> tuple[str, ...]:
    # vLLM drops repeated bad words (keeping the first), so duplicates cost nothing.
    return tuple(dict.fromkeys(_to_str_tuple(value)))


def _to_optional_int_tuple(value: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def _to_logit_bias(
    value: Mapping[int, float] | Mapping[str, float] | None,
) -> dict[int, float] | None:
    """Token ids as ints (OpenAI sends them as strings), biases clamped to [-100, 100]."""
    if value is None:
        return None
    invalid_keys = []
    bias: dict[int, float] = {}
    for token, amount in value.items():
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            invalid_keys.append(token)
            continue
        if isinstance(amount, bool) or not isinstance(amount, int | float) or math.isnan(amount):
            raise _bad("logit_bias", "a mapping of token ids to numbers", dict(value))
        bias[token_id] = min(100.0, max(-100.0, float(amount)))
    if invalid_keys:
        raise ValueError(
            "logit_bias contains key(s) that cannot be converted to integer token IDs: "
            f"{invalid_keys!r}"
        )
    return bias


def _to_proc_tuple(value: Sequence[LogitsProcessor] | None) -> tuple[LogitsProcessor, ...]:
    return () if value is None else tuple(value)


def _bad(field: str, allowed: str, value: object) -> ValueError:
    return ValueError(f"{field} must be {allowed}, got {value!r}")


@attrs.frozen(kw_only=True)
class SamplingParams:
    """Sampling parameters of one request (immutable, validated on construction).

    Attributes:
        n: Number of completions returned.
        best_of: Number of completions generated, of which the ``n`` with the highest
            cumulative log-probability are returned. Defaults to ``n``; must be >= n.
            All samples share the prompt's KV blocks (copy-on-write).
        presence_penalty: Penalizes tokens that already appeared in the output, in [-2, 2].
        frequency_penalty: Penalizes tokens by their count in the output, in [-2, 2].
        repetition_penalty: Divides (multiplies when negative) logits of tokens already in
            the prompt or output, in (0, 2]; 1 disables it.
        temperature: Softmax temperature, >= 0. 0 means greedy.
        top_p: Nucleus sampling mass, in (0, 1].
        top_k: Keep the k most likely tokens; -1 disables it.
        min_p: Drop tokens less likely than ``min_p`` times the most likely one, in [0, 1].
        seed: Makes sampling reproducible: a seeded request's samples do not depend on
            the batch it runs in.
        use_beam_search: Beam search (vLLM 0.3/0.4's form): ``best_of`` beams, of which
            the ``n`` best finished hypotheses are returned. Needs ``temperature=0``,
            ``best_of > 1`` and no ``top_p``/``top_k``/``min_p``; stop strings and
            structured outputs are not supported with it (docs/beam_search.md).
        length_penalty: Beam search only: a finished hypothesis scores
            ``cumulative_logprob / num_output_tokens ** length_penalty``.
        early_stopping: Beam search only: True stops once ``best_of`` hypotheses are
            finished; False stops when the best running beam, at its current length,
            cannot beat the worst finished one; "never" assumes the longest possible
            length for that test when ``length_penalty > 0`` (transformers' semantics).
        stop: Strings that end the generation; the matched string is cut from the text
            unless ``include_stop_str_in_output``. Normalized to a tuple.
        stop_token_ids: Token ids that end the generation (the token stays in
            ``token_ids``). Normalized to a tuple.
        include_stop_str_in_output: Keep the matched stop string in the text.
        ignore_eos: Keep generating past the end-of-sequence token.
        max_tokens: Upper bound on generated tokens per completion, >= 1; None means up
            to the model's context length. 0 scores the prompt without generating:
            allowed only with ``prompt_logprobs`` and ``n == best_of == 1``; the output
            holds the prompt logprobs and no token (finish_reason "length").
        min_tokens: Stop conditions (EOS, stop tokens, stop strings) are ignored until
            this many tokens were generated.
        logprobs: Return the log-probabilities of the chosen token plus this many most
            likely tokens at each step; None returns none.
        prompt_logprobs: Same for each prompt token (the first has none). Such a request
            is never served from the prefix cache.
        skip_special_tokens: Leave special tokens out of the text.
        spaces_between_special_tokens: Put spaces around special tokens in the text.
        logits_processors: Callables ``(output_token_ids, logits) -> logits`` applied in
            order before sampling.
        structured_outputs: Constrains the output to a JSON schema, regex, choice or
            grammar (see `StructuredOutputsParams`); cannot be combined with
            ``ignore_eos`` or ``min_tokens``, since the grammar decides where it ends.
        output_kind: Cumulative snapshots, deltas or only the final output, for the
            async engine's streams (see `RequestOutputKind`).
        logit_bias: Added to the logits of the given token ids before penalties and
            sampling (OpenAI's ``logit_bias``). Keys may be ints or strings of ints;
            each bias is clamped to [-100, 100] (as vLLM does); -100 in effect bans a
            token, 100 in effect forces it. Every token id must be in the vocabulary.
        allowed_token_ids: Only these token ids may be generated (every other logit is
            set to -inf); None allows all. Must not be empty; ids must be in the vocabulary.
        bad_words: Words that must not be generated. Each is tokenized twice, as it is
            and with a leading space (as vLLM does, for a word at the start of the text
            and one after a space; the spaced form only when it tokenizes to the same
            number of tokens with a new first token); the last token of a word is banned
            whenever the tokens generated so far end with the word's other tokens. The
            front doors tokenize them (`corral.tokenization.bind_bad_words`).
        truncate_prompt_tokens: Keep only the last k prompt tokens (left truncation),
            applied when the prompt is tokenized; -1 means ``max_model_len``. None keeps
            the whole prompt.
    """

    n: int = 1
    # None means n; __attrs_post_init__ resolves it, so readers always see an int.
    best_of: int = attrs.field(default=None)  # type: ignore[assignment]
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    stop: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple)
    stop_token_ids: tuple[int, ...] = attrs.field(default=(), converter=_to_int_tuple)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logits_processors: tuple[LogitsProcessor, ...] = attrs.field(
        default=(), converter=_to_proc_tuple
    )
    structured_outputs: StructuredOutputsParams | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    logit_bias: dict[int, float] | None = attrs.field(default=None, converter=_to_logit_bias)
    allowed_token_ids: tuple[int, ...] | None = attrs.field(
        default=None, converter=_to_optional_int_tuple
    )
    bad_words: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple_unique)
    truncate_prompt_tokens: int | None = None
    # The token ids of bad_words (each word and its leading-space form), set by
    # `corral.tokenization.bind_bad_words`; None until then.
    _bad_words_token_ids: tuple[tuple[int, ...], ...] | None = attrs.field(
        default=None, alias="_bad_words_token_ids", repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.best_of is None:
            object.__setattr__(self, "best_of", self.n)
        self._verify_args()
        if self.use_beam_search:
            self._verify_beam_search()
            return
        self._verify_non_beam_search()
        if self.temperature < _SAMPLING_EPS:
            # Greedy: truncation parameters have no effect, keep them neutral so that
            # a runner can test one flag instead of four.
            object.__setattr__(self, "top_p", 1.0)
            object.__setattr__(self, "top_k", -1)
            object.__setattr__(self, "min_p", 0.0)
            if self.best_of != 1:
                raise _bad("best_of", "1 when using greedy sampling (temperature 0)", self.best_of)

    @property
    def bad_words_token_ids(self) -> tuple[tuple[int, ...], ...] | None:
        """The tokenized ``bad_words``; None until a front door tokenized them."""
        return self._bad_words_token_ids

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always chosen (temperature 0)."""
        return self.temperature < _SAMPLING_EPS

    def _verify_args(self) -> None:
        best_of = self.best_of
        if self.n < 1:
            raise _bad("n", "at least 1", self.n)
        if best_of < self.n:
            raise _bad("best_of", f"at least n={self.n}", best_of)
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise _bad("presence_penalty", "in [-2, 2]", self.presence_penalty)
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise _bad("frequency_penalty", "in [-2, 2]", self.frequency_penalty)
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise _bad("repetition_penalty", "in (0, 2]", self.repetition_penalty)
        if not self.temperature >= 0.0:
            raise _bad("temperature", "non-negative", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise _bad("top_p", "in (0, 1]", self.top_p)
        if self.top_k < -1 or self.top_k == 0:
            raise _bad("top_k", "-1 (disabled) or at least 1", self.top_k)
        if not 0.0 <= self.min_p <= 1.0:
            raise _bad("min_p", "in [0, 1]", self.min_p)
        if self.max_tokens is not None and self.max_tokens < 1:
            self._verify_scoring_only()
        if self.min_tokens < 0:
            raise _bad("min_tokens", "non-negative", self.min_tokens)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise _bad("min_tokens", f"at most max_tokens={self.max_tokens}", self.min_tokens)
        if self.logprobs is not None and self.logprobs < 0:
            raise _bad("logprobs", "non-negative or None", self.logprobs)
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise _bad("prompt_logprobs", "non-negative or None", self.prompt_logprobs)
        if any(not s for s in self.stop):
            raise _bad("stop", "non-empty strings", self.stop)
        if any(t < 0 for t in self.stop_token_ids):
            raise _bad("stop_token_ids", "non-negative token ids", self.stop_token_ids)
        if not isinstance(self.output_kind, RequestOutputKind):
            raise _bad("output_kind", "a RequestOutputKind", self.output_kind)
        if not all(callable(p) for p in self.logits_processors):
            raise _bad("logits_processors", "callables", self.logits_processors)
        self._verify_token_constraints()
        self._verify_structured_outputs()

    def _verify_scoring_only(self) -> None:
        """``max_tokens=0``: the prompt is only scored (prompt logprobs, no token)."""
        if self.max_tokens != 0:
            raise _bad(
                "max_tokens", "at least 1, 0 (score the prompt only) or None", self.max_tokens
            )
        if self.prompt_logprobs is None:
            raise _bad(
                "max_tokens",
                "at least 1 unless prompt_logprobs is set (0 scores the prompt only)",
                self.max_tokens,
            )
        if self.best_of != 1:
            raise _bad("best_of", "1 with max_tokens=0 (nothing is sampled)", self.best_of)

    def _verify_token_constraints(self) -> None:
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids is not None and empty!")
        if self.allowed_token_ids is not None and min(self.allowed_token_ids) < 0:
            raise ValueError("allowed_token_ids contains out-of-vocab token id!")
        if any(not word for word in self.bad_words):
            raise ValueError(
                f"bad_words cannot contain an empty string. Got bad_words={list(self.bad_words)}"
            )
        truncate = self.truncate_prompt_tokens
        if truncate is not None and (
            isinstance(truncate, bool)
            or not isinstance(truncate, int)
            or truncate == 0
            or truncate < -1
        ):
            raise ValueError(
                f"truncate_prompt_tokens must be an integer >= 1 or -1, got {truncate}"
            )

    # --- beam search (vLLM 0.4's rules and messages) ---
    def _verify_beam_search(self) -> None:
        if self.best_of == 1:
            raise ValueError(
                f"best_of must be greater than 1 when using beam search. Got {self.best_of}."
            )
        if self.temperature > _SAMPLING_EPS:
            raise ValueError("temperature must be 0 when using beam search.")
        if self.top_p < 1.0 - _SAMPLING_EPS:
            raise ValueError("top_p must be 1 when using beam search.")
        if self.top_k != -1:
            raise ValueError("top_k must be -1 when using beam search.")
        if self.min_p > _SAMPLING_EPS:
            raise ValueError("min_p must be 0 when using beam search.")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"early_stopping must be True, False, or 'never', got {self.early_stopping}."
            )
        if self.stop:
            raise NotSupportedError("stop strings are not supported with beam search")
        if self.structured_outputs is not None:
            raise NotSupportedError("structured_outputs are not supported with beam search")

    def _verify_non_beam_search(self) -> None:
        if self.early_stopping is not False:
            raise ValueError(
                "early_stopping is not effective and must be False when not using beam search."
            )
        if not 1.0 - _SAMPLING_EPS <= self.length_penalty <= 1.0 + _SAMPLING_EPS:
            raise ValueError(
                "length_penalty is not effective and must be the default value of 1.0 "
                "when not using beam search."
            )

    # --- end beam search ---
    def _verify_structured_outputs(self) -> None:
        structured = self.structured_outputs
        if structured is None:
            return
        if not isinstance(structured, StructuredOutputsParams):
            raise _bad("structured_outputs", "a StructuredOutputsParams or None", structured)
        # The grammar allows the end-of-sequence token exactly when the output is
        # complete; either option would fight it.
        if self.ignore_eos:
            raise _bad("ignore_eos", "False with structured_outputs", self.ignore_eos)
        if self.min_tokens:
            raise _bad("min_tokens", "0 with structured_outputs", self.min_tokens)
