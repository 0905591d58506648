"""What chat and completion responses are built from, written once: the part of
each choice that is new since its previous chunk, the token usage, and the error
event that ends a stream early.

A streamed choice sends only what it has not sent yet, so that the concatenated
chunks equal the non-streamed answer; a choice that finished sends nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import attrs

from corral.entrypoints.errors import APIError, error_body
from corral.entrypoints.responses import UsageInfo
from corral.entrypoints.sse import Emit
from corral.errors import EngineDeadError
from corral.outputs import CompletionOutput, FinishReason, Logprobs, RequestOutput


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
    """Remembers how much of each of a request's ``n`` choices has been sent."""

    def __init__(self, n: int) -> None:
        self._sent_text = [0] * n
        self._sent_tokens = [0] * n
        self._done = [False] * n

    def deltas(self, output: RequestOutput) -> list[ChoiceDelta]:
        """The new part of every choice of ``output`` that has one (or just finished)."""
        deltas = []
        for i, completion in enumerate(output.outputs):
            delta = self._delta(i, completion)
            if delta is not None:
                deltas.append(delta)
        return deltas

    def _delta(self, i: int, completion: CompletionOutput) -> ChoiceDelta | None:
        if self._done[i]:
            return None
        sent_tokens = self._sent_tokens[i]
        text = completion.text[self._sent_text[i] :]
        token_ids = completion.token_ids[sent_tokens:]
        if not text and not token_ids and completion.finish_reason is None:
            return None
        first = sent_tokens == 0 and self._sent_text[i] == 0
        logprobs = list((completion.logprobs or [])[sent_tokens:])
        self._sent_text[i] = len(completion.text)
        self._sent_tokens[i] = len(completion.token_ids)
        self._done[i] = completion.finish_reason is not None
        return ChoiceDelta(
            i, text, token_ids, logprobs, first, completion.finish_reason, completion.stop_reason
        )


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
