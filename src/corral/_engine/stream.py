"""One request's path from the engine loop to its consumer: `RequestState` and `RequestStream`.

The loop keeps the latest cumulative `RequestOutput` of a request in its
`RequestState` and pokes the consumer through a memory object stream of buffer 1
that carries nothing but wake-ups. A full buffer means a wake-up is already
pending, so the loop never blocks and never queues: a slow consumer reads the
newest snapshot when it comes back (outputs coalesce), a fast one sees every step.

Output kinds (`RequestOutputKind`) are the stream's business, not the core's: a
FINAL_ONLY request wakes its consumer only at the end, and a DELTA stream cuts
each snapshot it reads down to what it has not handed out yet, so a coalesced
wake-up yields the concatenation of the steps it skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from corral.outputs import CompletionOutput, RequestOutput
from corral.sampling_params import RequestOutputKind

if TYPE_CHECKING:
    from types import TracebackType

    from corral.sampling_params import SamplingParams


class RequestState:
    """The engine's record of one request; touched only by the event loop's thread.

    ``done`` turns True once the engine will publish nothing more (finished,
    aborted, cancelled or failed); from then on the send side is closed.
    """

    __slots__ = (
        "arrival_time",
        "core_id",
        "done",
        "error",
        "final_only",
        "latest",
        "lora_int_id",
        "params",
        "prefix_pos",
        "prompt",
        "prompt_token_ids",
        "receive",
        "request_id",
        "send",
    )

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prefix_pos: int | None,
        arrival_time: float,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.prefix_pos = prefix_pos
        self.arrival_time = arrival_time
        # The LoRA adapter (0: none), pinned in host memory by the front door.
        self.lora_int_id = 0
        # The engine loop's private id for this request in the core (see EngineLoop._add).
        self.core_id: str | None = None
        self.latest: RequestOutput | None = None
        self.error: BaseException | None = None
        self.done = False
        self.final_only = params.output_kind is RequestOutputKind.FINAL_ONLY
        self.send, self.receive = anyio.create_memory_object_stream[None](1)

    def publish(self, output: RequestOutput) -> bool:
        """Make `output` the latest snapshot and wake the consumer.

        Returns False when the consumer has gone away (its receive side is closed).
        """
        self.latest = output
        if self.final_only:
            return True  # the consumer waits for `end`
        try:
            self.send.send_nowait(None)
        except anyio.WouldBlock:
            pass  # a wake-up is pending: the consumer will read this newer snapshot
        except anyio.BrokenResourceError:
            return False
        return True

    def end(self, output: RequestOutput | None = None, error: BaseException | None = None) -> None:
        """Deliver the final output or an error (or nothing, for a cancelled consumer).

        Both ends of the channel are closed here: from now on the consumer reads the
        stored result without receiving, so no channel outlives the request, whatever
        order the garbage collector later finalizes a forgotten stream in.
        """
        if self.done:
            return
        self.done = True
        self.error = error
        if output is not None or error is not None:
            if output is not None:
                self.latest = output
            try:
                self.send.send_nowait(None)
            except (anyio.WouldBlock, anyio.BrokenResourceError):
                pass  # pending wake-up, or nobody left to wake
        self.send.close()
        self.receive.close()


class DeltaCursor:
    """How much of each completion a DELTA stream has handed out.

    Text that may still be cut by a stop string (the last ``len(longest stop)``
    characters, unless ``include_stop_str_in_output``) is held back until the
    completion finishes, so that the deltas always concatenate to the final text.
    Not one character less: a match may end exactly where the previous step's text
    ended when ``min_tokens`` kept it from stopping then (see `corral.core.stop`).
    """

    __slots__ = ("_first", "_hold_back", "_sent")

    def __init__(self, params: SamplingParams) -> None:
        self._sent: dict[int, tuple[int, int]] = {}  # index -> (chars, tokens) handed out
        self._first = True
        stops = params.stop
        self._hold_back = (
            max(len(s) for s in stops) if stops and not params.include_stop_str_in_output else 0
        )

    def take(self, output: RequestOutput) -> RequestOutput:
        """The part of cumulative ``output`` not handed out yet; marks it handed out."""
        sent = self._sent
        completions = []
        for c in output.outputs:
            chars, tokens = sent.get(c.index, (0, 0))
            text = c.text
            end = len(text)
            if c.finish_reason is None and self._hold_back:
                end = max(chars, end - self._hold_back)
            token_ids, logprobs = c.tail(tokens)
            completions.append(
                CompletionOutput(
                    c.index,
                    text[chars:end],
                    token_ids,
                    c.cumulative_logprob,
                    logprobs,
                    c.finish_reason,
                    c.stop_reason,
                )
            )
            sent[c.index] = (end, tokens + len(token_ids))
        # Prompt logprobs come with every delta up to the first one that carries a
        # generated token (a token is sampled only once the whole prompt is in, so
        # they are complete by then), and never again.
        prompt_logprobs = output.prompt_logprobs if self._first else None
        if self._first and any(c.token_ids for c in completions):
            self._first = False
        return RequestOutput(
            output.request_id,
            output.prompt,
            output.prompt_token_ids,
            prompt_logprobs,
            completions,
            output.finished,
            output.metrics,
            output.error,
        )


class RequestStream:
    """The outputs of one request, as an async iterator and an async context manager.

    Each item is the request's cumulative `RequestOutput` (text and token ids so far),
    or with ``output_kind=DELTA`` what is new since the previous item, or with
    FINAL_ONLY the final output alone; the last one has ``finished=True``. A consumer that falls behind skips
    intermediate snapshots and gets the newest one: memory stays bounded and the
    batch never waits for it.

    The request is aborted, synchronously and without awaiting anything, when the
    consumer stops early in any of these ways: a cancellation delivered while
    waiting in ``__anext__`` (``move_on_after``, ``fail_after``, a cancelled task
    group), leaving ``async with`` before the end, `close` or `aclose`, or garbage
    collection of an abandoned stream (which is what a ``break`` out of a bare
    ``async for engine.generate(...)`` amounts to in CPython). Its KV blocks are
    free after the engine's next step. Prefer ``async with`` where the abort must
    happen at a known point.

    Raises (from iteration):
        EngineDeadError: the engine died; the step's exception is ``__cause__``.
        ValueError: the engine core refused the request.
    """

    __slots__ = ("__weakref__", "_cancel", "_closed", "_delta", "_finished", "_orphan", "_state")

    def __init__(
        self,
        state: RequestState,
        cancel: Callable[[RequestState], None],
        orphan: Callable[[RequestState], None],
    ) -> None:
        self._state = state
        self._cancel = cancel
        self._orphan = orphan
        self._finished = False
        self._closed = False
        self._delta = (
            DeltaCursor(state.params)
            if state.params.output_kind is RequestOutputKind.DELTA
            else None
        )

    @property
    def request_id(self) -> str:
        """The request's id (generated by the engine when the caller gave none)."""
        return self._state.request_id

    @property
    def output_kind(self) -> RequestOutputKind:
        """What each item holds: the request's ``SamplingParams.output_kind``."""
        return self._state.params.output_kind

    @property
    def finished(self) -> bool:
        """True once the final output (or an error) has been handed to the consumer."""
        return self._finished

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished:
            raise StopAsyncIteration
        state = self._state
        try:
            if state.done:
                await anyio.lowlevel.checkpoint()
            else:
                try:
                    await state.receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    # The request ended (and its channel closed) while this call
                    # waited; the outcome is stored on the state.
                    pass
        except BaseException:
            self.close()
            raise
        if self._finished:  # closed by another task meanwhile
            raise StopAsyncIteration
        if state.error is not None:
            self.close()
            raise state.error
        output = state.latest
        assert output is not None  # woken only once a snapshot (or the error) is stored
        if output.finished:
            self.close()
        if self._delta is not None:
            return self._delta.take(output)
        return output

    def close(self) -> None:
        """Stop consuming; aborts the request if it has not finished. Never blocks."""
        if self._closed:
            return
        self._closed = True
        self._finished = True
        self._state.receive.close()
        if not self._state.done:
            self._cancel(self._state)

    async def aclose(self) -> None:
        """`close`, then a checkpoint (for code written against async generators).

        The stream is closed, and the request aborted, even when the caller is
        cancelled: the cancellation is raised afterwards, as trio's ``aclose`` does.
        """
        self.close()
        await anyio.lowlevel.checkpoint()

    def __del__(self) -> None:
        # The collector may run this in any thread and in the middle of the engine
        # loop's bookkeeping, so only hand the request over; the loop aborts it at
        # its next step boundary.
        if self._closed:
            return
        self._closed = True
        self._state.receive.close()
        if not self._state.done:
            self._orphan(self._state)
