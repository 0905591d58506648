"""What a request's caller receives: cumulative snapshots of its completions.

Each `RequestOutput` holds everything generated so far (not a delta), so a consumer
that skips snapshots loses nothing. The types are plain mutable attrs classes, like
vLLM's, because the engine builds one per request per step and frozen attrs classes
cost noticeably more to build; the engine never mutates one after handing it out,
except `RequestMetrics`, which is shared by a request's snapshots and always holds
the latest timings.
"""

from __future__ import annotations

from typing import Literal

import attrs

FinishReason = Literal["stop", "length", "abort"]
Logprobs = dict[int, float]
"""Token id -> log-probability: the chosen token plus the most likely ones asked for."""


@attrs.define(slots=True)
class CompletionOutput:
    """One completion of a request.

    Attributes:
        index: The sample's index within the request (0 .. best_of - 1).
        text: Generated text, with a matched stop string cut off unless
            ``include_stop_str_in_output``. Empty when the engine has no detokenizer.
        token_ids: Generated token ids (an EOS or stop token id that ended the
            generation is included).
        cumulative_logprob: Sum of the chosen tokens' log-probabilities.
        logprobs: Per generated token, the chosen token's and the top-k log-probabilities,
            or None when ``SamplingParams.logprobs`` is None.
        finish_reason: None while running; "stop" (EOS, stop token or stop string),
            "length" (max_tokens or the model's context length) or "abort".
        stop_reason: The stop string or stop token id that ended it, None otherwise
            (also None for EOS).
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float
    logprobs: list[Logprobs] | None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@attrs.define(slots=True)
class RequestMetrics:
    """Timestamps of a request's life (``time.time()`` seconds; None until it happens)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@attrs.define(slots=True)
class RequestOutput:
    """A cumulative snapshot of one request.

    Attributes:
        request_id: The id given at submission.
        prompt: The prompt text, when the request was given as text.
        prompt_token_ids: The prompt's token ids.
        prompt_logprobs: Per prompt token, its log-probability and the top-k (None for
            the first token), or None when ``SamplingParams.prompt_logprobs`` is None.
        outputs: The ``n`` completions; with ``best_of > n`` the ``n`` with the highest
            cumulative log-probability so far.
        finished: True in the request's last snapshot.
        metrics: Timings, shared by all snapshots of the request.
        error: Why the engine gave up on the request (finish_reason "abort"), e.g. a
            prompt longer than the model's context; None otherwise.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[Logprobs | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    error: str | None = None
