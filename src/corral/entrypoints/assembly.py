"""What chat and completion responses are built from, written once: the part of
each choice that is new since its previous chunk, the token usage, and the error
event that ends a stream early.

A streamed request runs with ``output_kind=DELTA``: the engine's stream hands
out only what is new (holding back text a stop string may still cut), so a chunk
is built from a delta without re-slicing the cumulative text, and the
concatenated chunks equal the non-streamed answer; a choice that finished sends
nothing more. `DeltaAccumulator` rebuilds the cumulative final output (for usage
and metrics) by appending to lists, linear in the output's length.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import attrs

from corral.entrypoints.errors import APIError, error_body
from corral.entrypoints.responses import UsageInfo
from corral.entrypoints.sse import Emit
from corral.errors import EngineDeadError
from corral.outputs import CompletionOutput, FinishReason, Logprobs, RequestOutput

# Tokens a grammar or allowed_token_ids masks out have probability 0: logprob -inf,
# which JSON cannot carry. The floor is vLLM's, so clients that read it keep working.
JSON_LOGPROB_FLOOR = -9999.0


def json_logprob(value: float) -> float:
    """``value`` floored at `JSON_LOGPROB_FLOOR` (JSON has no -inf)."""
    return max(value, JSON_LOGPROB_FLOOR)


@attrs.define
class ChoiceDelta:
    """The part of one choice that a chunk carries.

    Attributes:
        index: The choice's position in its request's outputs.
        text: Text new since the previous chunk of this choice.
        token_ids: Token ids new since then.
        logprobs: Their logprob entries (empty when the request asked for none).
        first: Nothing of this choice has been sent before.
        finish_reason: Set on the choice's last chunk.
        stop_reason: The stop string or token that ended it, if any.
    """

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[Logprobs]
    first: bool
    finish_reason: FinishReason | None
    stop_reason: int | str | None


class ChoiceTracker:
    """Remembers which of a request's ``n`` choices have started and finished; reads
    the DELTA outputs of a streamed request (streaming needs ``best_of == n``, so
    a choice's position is its index)."""

    def __init__(self, n: int) -> None:
        self._started = [False] * n
        self._done = [False] * n

    def deltas(self, output: RequestOutput) -> list[ChoiceDelta]:
        """Every choice of the delta ``output`` that has something new (or just finished)."""
        deltas = []
        for i, completion in enumerate(output.outputs):
            delta = self._delta(i, completion)
            if delta is not None:
                deltas.append(delta)
        return deltas

    def _delta(self, i: int, completion: CompletionOutput) -> ChoiceDelta | None:
        if self._done[i]:
            return None
        text = completion.text
        token_ids = completion.token_ids
        if not text and not token_ids and completion.finish_reason is None:
            return None
        first = not self._started[i]
        logprobs = list(completion.logprobs or [])
        self._started[i] = True
        self._done[i] = completion.finish_reason is not None
        return ChoiceDelta(
            i, text, token_ids, logprobs, first, completion.finish_reason, completion.stop_reason
        )


class DeltaAccumulator:
    """Rebuilds a request's cumulative output from its DELTA outputs."""

    def __init__(self) -> None:
        self._texts: dict[int, list[str]] = {}
        self._token_ids: dict[int, list[int]] = {}
        self._logprobs: dict[int, list[Logprobs] | None] = {}
        self._prompt_logprobs: list[Logprobs | None] | None = None

    def add(self, delta: RequestOutput) -> None:
        if delta.prompt_logprobs is not None:
            self._prompt_logprobs = delta.prompt_logprobs
        for c in delta.outputs:
            self._texts.setdefault(c.index, []).append(c.text)
            self._token_ids.setdefault(c.index, []).extend(c.token_ids)
            if c.index not in self._logprobs:
                self._logprobs[c.index] = None if c.logprobs is None else []
            logprobs = self._logprobs[c.index]
            if logprobs is not None and c.logprobs is not None:
                logprobs.extend(c.logprobs)

    def result(self, last: RequestOutput) -> RequestOutput:
        """The cumulative output whose last delta is ``last`` (already added)."""
        completions = [
            CompletionOutput(
                c.index,
                "".join(self._texts[c.index]),
                self._token_ids[c.index],
                c.cumulative_logprob,
                self._logprobs[c.index],
                c.finish_reason,
                c.stop_reason,
            )
            for c in last.outputs
        ]
        return attrs.evolve(last, outputs=completions, prompt_logprobs=self._prompt_logprobs)


def usage_of(finals: Iterable[RequestOutput]) -> UsageInfo:
    """Prompt tokens of every request, generated tokens of every returned choice."""
    usage = UsageInfo()
    for final in finals:
        usage.prompt_tokens += len(final.prompt_token_ids)
        usage.completion_tokens += sum(len(c.token_ids) for c in final.outputs)
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return usage


async def stream_or_error(emit: Emit, work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work``, which emits a stream's chunks. A refusal (`APIError`) or a dead
    engine, once the response has started, can only be told in the stream: it
    becomes the stream's last event. Returns True when ``work`` completed."""
    try:
        await work()
    except APIError as exc:
        await emit(error_body(exc.status, exc.message, exc.param))
        return False
    except EngineDeadError as exc:
        await emit(error_body(503, f"the engine has died: {exc}"))
        return False
    return True
