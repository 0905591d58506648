"""A step's outputs across the actor boundary, as deltas: `OutputEncoder` in the engine
actor, `OutputDecoder` in the caller.

A `RequestOutput` is a cumulative snapshot, and pickling it ships the prompt and
every token generated so far, once per request per step (for 64 requests of a few
hundred prompt tokens, about 140 kB a step: over Ray's 100 kB limit for returning a
value inline, so each step's return also took the object store's slower path). The
encoder sends only what the caller has not seen: per completion, the new tokens,
logprobs and text, and how much of what the caller holds stays; per request, the
new prompt logprobs, the timings, the finish state. The decoder keeps each live
request's lists and rebuilds the same snapshots the core made, with the prompt the
caller already holds.

Tokens and logprobs of a completion only ever grow, except in beam search, where a
completion index may move to another beam: a beam request's snapshots (today only
its final one) are sent in full. Text is checked: what the caller holds stays when
the new text starts with it, else the text travels in full.
"""

from __future__ import annotations

from typing import Any

from corral.outputs import (
    CompletionOutput,
    FinishReason,
    Logprobs,
    RequestMetrics,
    RequestOutput,
)

# One completion: (index, tokens kept, new token ids, characters kept, new text,
# cumulative logprob, new logprobs (None without logprobs), finish reason, stop reason).
# The logprobs keep as many entries as the tokens do.
CompletionDelta = tuple[
    int,
    int,
    list[int],
    int,
    str,
    float,
    "list[Logprobs] | None",
    "FinishReason | None",
    "int | str | None",
]
# One request: (request id, completions in the snapshot's order, prompt logprobs kept,
# new prompt logprobs (None without them), finished, the five timings, error).
RequestDelta = tuple[
    str,
    list[CompletionDelta],
    int,
    "list[Logprobs | None] | None",
    bool,
    "tuple[float, float | None, float | None, float | None, float | None] | None",
    "str | None",
]


class OutputEncoder:
    """Turns the core's snapshots into deltas against what it already sent.

    Every delta it returns must reach the decoder (a lost step would leave the two
    out of step): the actor's step either returns them or fails, and a failed step
    kills the engine.
    """

    def __init__(self) -> None:
        # Request id -> completion index -> (tokens sent, text sent).
        self._sent: dict[str, dict[int, tuple[int, str]]] = {}
        # Request id -> prompt logprobs sent.
        self._sent_prompt: dict[str, int] = {}
        self._beam: set[str] = set()

    def add(self, request_id: str, use_beam_search: bool) -> None:
        """Start a request: nothing of it has been sent."""
        self._sent[request_id] = {}
        self._sent_prompt[request_id] = 0
        if use_beam_search:
            self._beam.add(request_id)

    def encode(self, outputs: list[RequestOutput]) -> list[RequestDelta]:
        return [self._encode(output) for output in outputs]

    def _encode(self, output: RequestOutput) -> RequestDelta:
        request_id = output.request_id
        sent = self._sent[request_id]
        in_full = request_id in self._beam
        completions: list[CompletionDelta] = []
        for completion in output.outputs:
            index = completion.index
            num_sent, text_sent = sent.get(index, (0, ""))
            keep = 0 if in_full else num_sent
            token_ids, logprobs = completion.tail(keep)
            text = completion.text
            text_keep = len(text_sent) if text.startswith(text_sent) else 0
            completions.append(
                (
                    index,
                    keep,
                    token_ids,
                    text_keep,
                    text[text_keep:],
                    completion.cumulative_logprob,
                    logprobs,
                    completion.finish_reason,
                    completion.stop_reason,
                )
            )
            sent[index] = (keep + len(token_ids), text)
        prompt_keep = self._sent_prompt[request_id]
        prompt_logprobs = output.prompt_logprobs
        new_prompt_logprobs = None
        if prompt_logprobs is not None:
            new_prompt_logprobs = prompt_logprobs[prompt_keep:]
            self._sent_prompt[request_id] = len(prompt_logprobs)
        metrics = output.metrics
        timings = (
            None
            if metrics is None
            else (
                metrics.arrival_time,
                metrics.first_scheduled_time,
                metrics.first_token_time,
                metrics.last_token_time,
                metrics.finished_time,
            )
        )
        if output.finished:
            del self._sent[request_id], self._sent_prompt[request_id]
            self._beam.discard(request_id)
        return (
            request_id,
            completions,
            prompt_keep,
            new_prompt_logprobs,
            output.finished,
            timings,
            output.error,
        )


class _Completion:
    """The caller's copy of one completion. Its lists only grow while snapshots
    window into them; a shrink (beam search) replaces the list."""

    __slots__ = ("logprobs", "text", "token_ids")

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[Logprobs] | None = None


class _Request:
    __slots__ = ("completions", "metrics", "prompt", "prompt_logprobs", "prompt_token_ids")

    def __init__(self, prompt: str | None, prompt_token_ids: list[int]) -> None:
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.completions: dict[int, _Completion] = {}
        self.prompt_logprobs: list[Logprobs | None] | None = None
        # Shared by the request's snapshots, as the core's are.
        self.metrics: RequestMetrics | None = None


class OutputDecoder:
    """Rebuilds the core's snapshots from an `OutputEncoder`'s deltas."""

    def __init__(self) -> None:
        self._requests: dict[str, _Request] = {}

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def __bool__(self) -> bool:
        return bool(self._requests)

    def add(self, request_id: str, prompt: str | None, prompt_token_ids: list[int]) -> None:
        """Start a request (before its add travels to the encoder's side)."""
        self._requests[request_id] = _Request(prompt, prompt_token_ids)

    def decode(self, deltas: list[RequestDelta]) -> list[RequestOutput]:
        return [self._decode(delta) for delta in deltas]

    def _decode(self, delta: RequestDelta) -> RequestOutput:
        (
            request_id,
            completion_deltas,
            prompt_keep,
            new_prompt_logprobs,
            finished,
            timings,
            error,
        ) = delta
        request = self._requests[request_id]
        completions = [self._completion(request, d) for d in completion_deltas]
        if new_prompt_logprobs is not None:
            request.prompt_logprobs = _grown(
                request.prompt_logprobs or [], prompt_keep, new_prompt_logprobs
            )
        if timings is not None:
            if request.metrics is None:
                request.metrics = RequestMetrics(*timings)
            else:
                metrics = request.metrics
                (
                    metrics.arrival_time,
                    metrics.first_scheduled_time,
                    metrics.first_token_time,
                    metrics.last_token_time,
                    metrics.finished_time,
                ) = timings
        if finished:
            del self._requests[request_id]
        return RequestOutput(
            request_id,
            request.prompt,
            request.prompt_token_ids,
            # Shared by the snapshots and growing over prefill chunks, as the core's is.
            request.prompt_logprobs,
            completions,
            finished,
            request.metrics,
            error,
        )

    @staticmethod
    def _completion(request: _Request, delta: CompletionDelta) -> CompletionOutput:
        index, keep, token_ids, text_keep, text, cumulative_logprob, logprobs, finish, stop = delta
        mine = request.completions.get(index)
        if mine is None:
            mine = request.completions[index] = _Completion()
        mine.token_ids = _grown(mine.token_ids, keep, token_ids)
        if logprobs is not None:
            mine.logprobs = _grown(mine.logprobs or [], keep, logprobs)
        mine.text = mine.text[:text_keep] + text
        num_tokens = len(mine.token_ids)
        return CompletionOutput.from_window(
            index,
            mine.text,
            mine.token_ids,
            0,
            num_tokens,
            cumulative_logprob,
            mine.logprobs,
            finish,
            stop,
        )


def _grown(held: list[Any], keep: int, new: list[Any]) -> list[Any]:
    """``held[:keep] + new``: in place when all of ``held`` stays (snapshots window into
    it and only look at a prefix), else a new list."""
    if keep == len(held):
        held.extend(new)
        return held
    return held[:keep] + new
