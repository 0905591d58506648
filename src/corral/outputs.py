"""What a request's caller receives: cumulative snapshots of its completions.

Each `RequestOutput` the engine makes holds everything generated so far (not a
delta), so a consumer that skips snapshots loses nothing; a stream turns them into
deltas for ``RequestOutputKind.DELTA`` (see `corral._engine.stream`). The types are plain mutable classes, like vLLM's,
because the engine builds one per request per step and frozen classes cost
noticeably more to build; the engine never mutates one after handing it out, except
`RequestMetrics`, which is shared by a request's snapshots and always holds the
latest timings.
"""

from __future__ import annotations

from typing import Literal

import attrs

FinishReason = Literal["stop", "length", "abort"]
Logprobs = dict[int, float]
"""Token id -> log-probability: the chosen token plus the most likely ones asked for."""


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

    The engine builds one per sequence per step; ``token_ids`` and ``logprobs`` are
    copied out of the sequence's (append-only) lists only when first read, so
    snapshots that nobody reads cost no copy.
    """

    __slots__ = (
        "_logprobs",
        "_logprobs_source",
        "_start",
        "_stop",
        "_token_ids",
        "_token_source",
        "cumulative_logprob",
        "finish_reason",
        "index",
        "stop_reason",
        "text",
    )

    def __init__(
        self,
        index: int,
        text: str,
        token_ids: list[int],
        cumulative_logprob: float,
        logprobs: list[Logprobs] | None,
        finish_reason: FinishReason | None = None,
        stop_reason: int | str | None = None,
    ) -> None:
        self.index = index
        self.text = text
        self._token_ids: list[int] | None = token_ids
        self._token_source: list[int] | None = None
        self._start = self._stop = 0
        self.cumulative_logprob = cumulative_logprob
        self._logprobs = logprobs
        self._logprobs_source: list[Logprobs] | None = None
        self.finish_reason = finish_reason
        self.stop_reason = stop_reason

    @classmethod
    def from_window(
        cls,
        index: int,
        text: str,
        token_source: list[int],
        start: int,
        stop: int,
        cumulative_logprob: float,
        logprobs_source: list[Logprobs] | None,
        finish_reason: FinishReason | None,
        stop_reason: int | str | None,
    ) -> CompletionOutput:
        """A completion whose tokens are ``token_source[start:stop]`` (and logprobs the
        first ``stop - start`` of ``logprobs_source``); both lists must only ever grow."""
        out = cls.__new__(cls)
        out.index = index
        out.text = text
        out._token_ids = None
        out._token_source = token_source
        out._start = start
        out._stop = stop
        out.cumulative_logprob = cumulative_logprob
        out._logprobs = None
        out._logprobs_source = logprobs_source
        out.finish_reason = finish_reason
        out.stop_reason = stop_reason
        return out

    @property
    def token_ids(self) -> list[int]:
        if self._token_ids is None:
            self._token_ids = self._token_source[self._start : self._stop]  # type: ignore[index]
        return self._token_ids

    @token_ids.setter
    def token_ids(self, value: list[int]) -> None:
        self._token_ids = value

    @property
    def logprobs(self) -> list[Logprobs] | None:
        if self._logprobs is None and self._logprobs_source is not None:
            self._logprobs = self._logprobs_source[: self._stop - self._start]
        return self._logprobs

    @logprobs.setter
    def logprobs(self, value: list[Logprobs] | None) -> None:
        self._logprobs = value
        self._logprobs_source = None

    @property
    def num_tokens(self) -> int:
        """``len(token_ids)``, without copying them."""
        if self._token_ids is not None:
            return len(self._token_ids)
        return self._stop - self._start

    def tail(self, start: int) -> tuple[list[int], list[Logprobs] | None]:
        """The token ids and logprobs from position ``start`` on, copying only those
        (a delta output's cost does not grow with the completion's length)."""
        if self._token_ids is not None:
            token_ids = self._token_ids[start:]
        else:
            token_ids = self._token_source[self._start + start : self._stop]  # type: ignore[index]
        if self._logprobs is not None:
            logprobs: list[Logprobs] | None = self._logprobs[start:]
        elif self._logprobs_source is not None:
            logprobs = self._logprobs_source[start : self._stop - self._start]
        else:
            logprobs = None
        return token_ids, logprobs

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _fields(self) -> tuple[object, ...]:
        return (
            self.index,
            self.text,
            self.token_ids,
            self.cumulative_logprob,
            self.logprobs,
            self.finish_reason,
            self.stop_reason,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompletionOutput):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"CompletionOutput(index={self.index}, text={self.text!r}, "
            f"token_ids={self.token_ids}, cumulative_logprob={self.cumulative_logprob}, "
            f"logprobs={self.logprobs}, finish_reason={self.finish_reason!r}, "
            f"stop_reason={self.stop_reason!r})"
        )


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
