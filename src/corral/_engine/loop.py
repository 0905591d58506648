"""The engine loop: the one task that drives the `EngineCore`.

User tasks never touch the core. `generate` and `abort` leave a command in the
inbox and wake the loop; the loop applies the inbox only between steps, runs each
``core.step()`` in a worker thread (one at a time, through a `CapacityLimiter(1)`)
so that the event loop keeps serving consumers while the model computes, hands
each step's outputs to the requests' states, and sleeps on an event when the core
has nothing to do.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import anyio
import attrs

from corral.config import CoreConfig
from corral.errors import EngineDeadError
from corral.outputs import CompletionOutput, RequestOutput
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats

from .stream import RequestState


def aborted_output(state: RequestState) -> RequestOutput:
    """The final snapshot of an explicitly aborted request: the tokens its consumer
    could already see, nothing newer, each unfinished completion marked "abort"."""
    latest = state.latest
    if latest is None:
        completions = [
            CompletionOutput(index, "", [], 0.0, None, "abort") for index in range(state.params.n)
        ]
        return RequestOutput(
            state.request_id, state.prompt, state.prompt_token_ids, None, completions, True
        )
    completions = [
        c
        if c.finish_reason is not None
        else CompletionOutput(
            c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs, "abort"
        )
        for c in latest.outputs
    ]
    return attrs.evolve(latest, outputs=completions, finished=True)


class CoreLike(Protocol):
    """What the loop calls on a core: an `EngineCore`, or a `RemoteCore` whose core
    lives in a Ray actor (see `corral.distributed`)."""

    config: CoreConfig

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
        arrival_time: float | None = None,
        prefix_pos: int | None = None,
        lora_int_id: int = 0,
    ) -> None: ...

    def abort_request(self, request_id: str | Iterable[str]) -> None: ...

    def has_unfinished_requests(self) -> bool: ...

    def step(self) -> list[RequestOutput]: ...

    def stats(self) -> EngineStats: ...


class EngineLoop:
    """Owns the core and every live request's state.

    Args:
        core: The synchronous engine core; from now on only this object calls it.
        on_finished: Called (in the event loop's thread) when a request ends, with its
            final output, or None when it was aborted or its consumer went away.
        on_step: Called after each step, once `stats` is updated (for periodic stats
            logging).
    """

    def __init__(
        self,
        core: CoreLike,
        *,
        on_finished: Callable[[RequestState, RequestOutput | None], None],
        on_step: Callable[[], None],
    ) -> None:
        self.core = core
        # The core's statistics as of the last step boundary, for readers in other
        # tasks: the core itself is only ever read by this loop, between steps.
        self.stats: EngineStats = core.stats()
        self.live: dict[str, RequestState] = {}
        self.fault: BaseException | None = None
        self.stopping = False
        # True while `run` executes; `_exited` is set each time it returns.
        self.running = False
        self._exited: anyio.Event | None = None
        self._on_finished = on_finished
        self._on_step = on_step
        self._limiter = anyio.CapacityLimiter(1)
        # (is_add, state); carrying the state rather than its id keeps an abort aimed
        # at the incarnation it was meant for when an id is reused at once.
        self._inbox: deque[tuple[bool, RequestState]] = deque()
        # Streams collected by the garbage collector, possibly in another thread;
        # deque.append is atomic, everything else waits for the loop.
        self._orphans: deque[RequestState] = deque()
        # Core id -> state, for every request the core knows (aborted ones until their
        # final output came out).
        self._in_core: dict[str, RequestState] = {}
        self._core_ids = itertools.count()
        self._wake: anyio.Event | None = None
        self._published: anyio.Event | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Drive the core until `stop`; a failing step kills the engine (see `fault`).

        A cancellation takes effect only between steps: a step and the hand-out of
        its outputs are shielded, so that no step's outputs are ever lost (the worker
        thread could not be abandoned anyway). After a cancellation the requests stay
        queued and `run` may be called again.
        """
        if self.running:
            raise RuntimeError("the engine loop is already running")
        self.running = True
        self._exited = anyio.Event()
        self._wake = anyio.Event()
        task_status.started()
        core = self.core
        try:
            while not self.stopping:
                applied = self._apply_inbox()
                if not core.has_unfinished_requests():
                    if applied:
                        # Commands that needed no step (an add and its abort, both
                        # before the loop saw either) still end in a snapshot, so that
                        # a reader waiting for the inbox to drain is woken.
                        self._publish_stats()
                    if not (self._inbox or self.stopping):
                        await self._wake.wait()
                        self._wake = anyio.Event()
                    continue
                with anyio.CancelScope(shield=True):
                    outputs = await anyio.to_thread.run_sync(core.step, limiter=self._limiter)
                    self._publish_stats()
                    self._dispatch(outputs)
                    self._on_step()
        except Exception as exc:
            self.die(exc)
        finally:
            self.running = False
            self._exited.set()

    async def wait_exited(self) -> None:
        """Wait until `run` has returned, if it is running (shielded from cancellation:
        the caller must not touch the core while a step may be in flight)."""
        if self.running and self._exited is not None:
            with anyio.CancelScope(shield=True):
                await self._exited.wait()

    async def wait_published(self) -> None:
        """Wait until the next `stats` snapshot is out, or the loop stops or dies."""
        if self._published is None:
            self._published = anyio.Event()
        await self._published.wait()

    def _publish_stats(self) -> None:
        self.stats = self.core.stats()
        self._wake_stats_readers()

    def _wake_stats_readers(self) -> None:
        if self._published is not None:
            self._published.set()
            self._published = None

    def submit(self, state: RequestState) -> None:
        """Register a request; atomic (no checkpoint), so a cancellation either
        finds it fully registered or not at all."""
        self.live[state.request_id] = state
        self._push_add(state)

    def abort(self, request_id: str) -> None:
        """End a live request with a final "abort" output; unknown ids are ignored."""
        state = self.live.get(request_id)
        if state is None:
            return
        output = aborted_output(state)
        self._forget(state)
        state.end(output)
        self._on_finished(state, None)
        self._push_abort(state)

    def cancel(self, state: RequestState) -> None:
        """Abort a request whose consumer has gone away (nothing more is delivered)."""
        if state.done:
            return
        self._forget(state)
        state.end()
        self._on_finished(state, None)
        self._push_abort(state)

    def orphan(self, state: RequestState) -> None:
        """`cancel`, deferred to the loop; safe from a finalizer in any thread."""
        self._orphans.append(state)

    def reap_orphans(self) -> None:
        """Cancel the requests of garbage-collected streams now (event loop thread only)."""
        while self._orphans:
            self.cancel(self._orphans.popleft())

    def stop(self) -> None:
        """Abort every live request and let `run` return after the current step."""
        self.stopping = True
        for request_id in list(self.live):
            self.abort(request_id)
        if self._wake is not None:
            self._wake.set()
        self._wake_stats_readers()

    async def flush(self) -> None:
        """After `run` returned: apply the last aborts and free their blocks.

        Aborted requests need no model work; the step still runs in a worker thread,
        since a remote core's step waits for its actor. Shielded: it must end.
        """
        if self.fault is not None:
            return
        with anyio.CancelScope(shield=True):
            try:
                self._apply_inbox()
                if self.core.has_unfinished_requests():
                    outputs = await anyio.to_thread.run_sync(self.core.step, limiter=self._limiter)
                    self._publish_stats()
                    self._dispatch(outputs)
            except Exception as exc:
                self.die(exc)

    def die(self, cause: BaseException) -> None:
        """Mark the engine dead: every live stream raises `EngineDeadError` from `cause`."""
        self.fault = cause
        self.stopping = True
        if self._wake is not None:
            self._wake.set()
        self._wake_stats_readers()
        states = {id(s): s for s in (*self.live.values(), *self._in_core.values())}
        states.update((id(s), s) for _, s in self._inbox)
        self.live.clear()
        self._in_core.clear()
        self._inbox.clear()
        for state in states.values():
            if not state.done:
                error = EngineDeadError(
                    f"the engine died: a step raised {type(cause).__name__}: {cause}"
                )
                error.__cause__ = cause
                state.end(error=error)

    def _push_add(self, state: RequestState) -> None:
        self._push((True, state))

    def _push_abort(self, state: RequestState) -> None:
        self._push((False, state))

    def _push(self, command: tuple[bool, RequestState]) -> None:
        self._inbox.append(command)
        if self._wake is not None:
            self._wake.set()

    def _forget(self, state: RequestState) -> None:
        if self.live.get(state.request_id) is state:
            del self.live[state.request_id]

    @property
    def has_pending_commands(self) -> bool:
        """Whether adds or aborts wait for the loop's next step boundary (the last
        `stats` snapshot does not reflect them yet)."""
        return bool(self._inbox or self._orphans)

    def _apply_inbox(self) -> bool:
        """Apply queued adds and aborts; return whether there were any."""
        applied = self.has_pending_commands
        self.reap_orphans()
        core = self.core
        while self._inbox:
            is_add, state = self._inbox.popleft()
            if is_add:
                if not state.done:
                    self._add(state)
            elif state.core_id is not None and self._in_core.get(state.core_id) is state:
                core.abort_request(state.core_id)
        return applied

    def _add(self, state: RequestState) -> None:
        # The core knows each request by a private id of its own, never the user's
        # request_id: an aborted request stays in the core until its final output comes
        # out of a step, and a new request may reuse its request_id meanwhile.
        core_id = str(next(self._core_ids))
        try:
            self.core.add_request(
                core_id,
                state.prompt_token_ids,
                state.params,
                prompt=state.prompt,
                arrival_time=state.arrival_time,
                prefix_pos=state.prefix_pos,
                lora_int_id=state.lora_int_id,
            )
        except ValueError as exc:
            self._forget(state)
            state.end(error=exc)
            # The front door releases what the request held (a LoRA adapter's pin).
            self._on_finished(state, None)
            return
        state.core_id = core_id
        self._in_core[core_id] = state

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        in_core = self._in_core
        for output in outputs:
            state = in_core.get(output.request_id)
            if state is None:
                continue
            if output.finished:
                del in_core[output.request_id]
            if state.done:
                continue
            output.request_id = state.request_id
            if output.finished:
                self._forget(state)
                state.end(output)
                self._on_finished(state, output)
            elif not state.publish(output):
                self.cancel(state)
