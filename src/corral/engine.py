"""The async front door: `open_engine`, `AsyncEngine` and `RequestStream`.

The engine lives inside the caller's trio or asyncio program. `open_engine` loads
the model in a worker thread, starts the engine loop as a task of its own task
group, and hands out an `AsyncEngine` only once that loop is ready. Everything the
engine does happens inside the ``async with`` block: there is no background task
that outlives it. See docs/async.md for the concurrency contract.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from corral._concurrency import FirstError
from corral._engine.loop import CoreLike, EngineLoop
from corral._engine.replicas import Replica, Router, aggregate_stats
from corral._engine.reporting import RequestLogger, StatsLogger
from corral._engine.stream import RequestState, RequestStream
from corral.beam_search import BeamSearchParams
from corral.config import AsyncEngineArgs, EngineArgs
from corral.core.engine_core import EngineCore
from corral.core.validation import check_sampling_params, validate_request
from corral.errors import (
    DistributedError,
    EngineClosedError,
    EngineDeadError,
    NotSupportedError,
)
from corral.lora.request import LoRARequest
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats
from corral.tokenization import bind_bad_words, encode_prompt, truncate_prompt, validate_prompt

if TYPE_CHECKING:
    from corral.distributed.remote_core import RemoteLoRA
    from corral.lora.manager import LoRAManager
    from corral.model.config import ModelConfig
    from corral.outputs import RequestOutput

logger = logging.getLogger("corral.engine")

__all__ = [
    "AsyncEngine",
    "EngineClosedError",
    "RequestStream",
    "open_engine",
    "open_engine_from_core",
    "open_ray_engine",
]


def normalize_request_id(request_id: object) -> str | None:
    """A request id as the engine knows it: vLLM callers may pass an int, which
    becomes its string; None stays None (``generate`` then makes a fresh id).

    Raises:
        ValueError: any other type.
    """
    if request_id is None or isinstance(request_id, str):
        return request_id
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return str(request_id)
    raise ValueError(f"request_id must be a str, got {type(request_id).__name__}")


class AsyncEngine:
    """A running engine; obtain one from `open_engine` or `open_engine_from_core`.

    Every method is called from the event loop's thread (any task). None of them
    waits for the model: requests are handed to the engine loop, which takes them
    up at its next step boundary.

    With several data-parallel replicas, each has its own engine loop; `generate`
    routes each request to one of them (see `corral._engine.replicas`). A replica
    whose step raised fails only its own requests; the engine is dead (`errored`)
    once no replica is left.
    """

    def __init__(
        self,
        core: CoreLike | Sequence[CoreLike],
        *,
        tokenizer: Any,
        model_config: ModelConfig | None,
        request_logger: RequestLogger,
        log_stats: bool,
        stats_interval: float,
        owns_loop: bool = True,
        replica_names: Sequence[str] | None = None,
    ) -> None:
        cores = list(core) if isinstance(core, Sequence) else [core]
        names = list(replica_names) if replica_names else [str(i) for i in range(len(cores))]
        self._tokenizer = tokenizer
        self._model_config = model_config
        self._request_logger = request_logger
        self._stats_logger = StatsLogger(self.stats, interval=stats_interval, enabled=log_stats)
        self._replicas = [
            Replica(
                name,
                c,
                EngineLoop(
                    c, on_finished=self._request_finished, on_step=self._stats_logger.after_step
                ),
                c.config,
                _has_detokenizer(c),
                _lora_manager(c),
            )
            for name, c in zip(names, cores, strict=True)
        ]
        self._router = Router(self._replicas)
        # The first replica's, for code that knows the engine has one.
        self._core = cores[0]
        self._loop = self._replicas[0].loop
        # The first replica's LoRA adapters (None without enable_lora; every replica
        # has its own), and the live requests holding a pin on an adapter of a replica.
        self._lora: LoRAManager | RemoteLoRA | None = self._replicas[0].lora
        self._lora_pins: dict[RequestState, tuple[LoRAManager | RemoteLoRA, int]] = {}
        self._owns_loop = owns_loop
        self._state = "new"
        # The engine's task group: runs grammar compilations for `generate`.
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def is_running(self) -> bool:
        """True inside the engine's block while the engine loop is alive (with
        ``start_engine_loop=False``: while the owner runs `run_engine_loop`)."""
        return self._state == "running" and any(r.alive and r.loop.running for r in self._replicas)

    @property
    def max_loras(self) -> int:
        """Most distinct LoRA adapters in one step; 0 when LoRA is not enabled."""
        return self._core.config.max_loras

    @property
    def errored(self) -> bool:
        """True once a step raised (on every replica): the engine is dead for good."""
        return self._fault is not None

    @property
    def _fault(self) -> BaseException | None:
        """The first replica's fault once every replica died, else None."""
        if any(r.alive for r in self._replicas):
            return None
        return self._replicas[0].loop.fault

    def replica_health(self) -> dict[str, str | None]:
        """Each replica's name and, for a dead one, why it died (None while alive)."""
        health: dict[str, str | None] = {}
        for replica in self._replicas:
            fault = replica.loop.fault
            health[replica.name] = None if fault is None else f"{type(fault).__name__}: {fault}"
        return health

    def replica_nodes(self) -> dict[str, str | None]:
        """Each replica's name and the Ray node it runs on (None for an in-process core)."""
        return {r.name: getattr(r.core, "node_id", None) for r in self._replicas}

    def replica_stats(self) -> dict[str, EngineStats]:
        """Each replica's statistics as of its last step boundary."""
        return {r.name: r.loop.stats for r in self._replicas}

    @property
    def _has_pending_commands(self) -> bool:
        return any(r.loop.has_pending_commands for r in self._replicas)

    @property
    def is_stopped(self) -> bool:
        """True once the engine can serve nothing more: it died or its block was left."""
        return self.errored or self._state == "closed"

    async def check_health(self) -> None:
        """Return if the engine can serve requests (a checkpoint).

        Raises:
            EngineDeadError: the engine died (the step's error is ``__cause__``).
            EngineClosedError: the engine's block has been left (or not entered).
        """
        await anyio.lowlevel.checkpoint()
        self._check_running()

    async def do_log_stats(self) -> None:
        """Log the statistics line now (unless stats logging is disabled)."""
        await anyio.lowlevel.checkpoint()
        self._stats_logger.log_now()

    async def run_engine_loop(self) -> None:
        """Run the engine loop in the caller's task, for an engine opened with
        ``start_engine_loop=False`` (e.g. ``tg.start_soon(engine.run_engine_loop)``).

        Requests submitted before it runs wait in the queue. It returns when the
        engine's block is left (after the step in flight) or the engine dies; a
        cancellation stops it between two steps, and it may be run again later. A
        step's error is not raised here: the engine is dead, its streams raise
        `EngineDeadError`, and leaving the engine's block raises the error.

        Raises:
            RuntimeError: the engine runs its own loop, or this loop already runs.
            EngineClosedError: the engine's block has not been entered yet.
        """
        if self._owns_loop:
            raise RuntimeError(
                "run_engine_loop: this engine runs its own loop; open it with "
                "start_engine_loop=False to run the loop yourself"
            )
        if self._state == "new":
            raise EngineClosedError("run_engine_loop: the engine's block has not been entered yet")
        if len(self._replicas) == 1:
            await self._loop.run()
            return
        async with anyio.create_task_group() as tg:
            for replica in self._replicas:
                tg.start_soon(replica.loop.run)

    def generate(
        self,
        prompt: str | None,
        sampling_params: SamplingParams,
        request_id: str | None = None,
        *,
        prompt_token_ids: Sequence[int] | None = None,
        lora_request: LoRARequest | None = None,
        prefix_pos: int | None = None,
    ) -> RequestStream:
        """Submit a request and return the stream of its cumulative outputs.

        The request is registered before this returns (no checkpoint in between), so
        cancellation can never leave it half-known. It runs whether or not the stream
        is read; ending the stream early aborts it (see `RequestStream`).

        Args:
            prompt: The prompt text; may be None when ``prompt_token_ids`` is given
                (then it is only echoed in outputs).
            sampling_params: How to sample and when to stop.
            request_id: Unique among live requests; an int is turned into its string.
                A fresh id is generated when None. An id may be reused as soon as its
                previous request has ended, aborted or not.
            prompt_token_ids: The prompt as token ids; else ``prompt`` is tokenized
                (with special tokens, as vLLM does), in this call.
            lora_request: The LoRA adapter to run with (needs ``enable_lora``). One not yet
                in host memory is read in a worker thread before the request is queued;
                a bad adapter ends the stream with its ValueError (call `add_lora`
                first to get that error here).
            prefix_pos: Hint that the first ``prefix_pos`` prompt tokens are a shared
                prefix whose KV blocks should stay cached longest.

        Raises:
            ValueError: a live duplicate ``request_id``, or a prompt the engine can never
                serve (empty, out-of-vocabulary ids, longer than ``max_model_len``,
                larger than the KV cache), with the field named; a ``lora_request``
                while LoRA is not enabled.
            EngineDeadError: the engine died (the step's error is ``__cause__``).
            EngineClosedError: the engine's block has been left (or not entered).
        """
        self._check_running()
        self._check_lora(lora_request)
        request_id = normalize_request_id(request_id)
        if request_id is None:
            request_id = uuid.uuid4().hex
        for other in self._replicas:
            # An abandoned stream's id must be free again, not just at the next step.
            other.loop.reap_orphans()
            if request_id in other.loop.live:
                raise ValueError(f"request_id {request_id!r} is already in use by a live request")
        check_sampling_params(sampling_params)
        token_ids = self._prompt_token_ids(
            prompt, prompt_token_ids, sampling_params.truncate_prompt_tokens
        )
        sampling_params = bind_bad_words(self._tokenizer, sampling_params)
        replica = self._router.choose(
            token_ids, 0 if lora_request is None else lora_request.lora_int_id
        )
        assert replica is not None  # _check_running found a live replica, no await since
        # The core would refuse these at its next step; saying so here is clearer.
        error = validate_request(
            replica.config,
            token_ids,
            sampling_params,
            prefix_pos,
            has_detokenizer=replica.has_detokenizer,
        )
        if error is not None:
            raise ValueError(error)
        state = RequestState(
            request_id, prompt, token_ids, sampling_params, prefix_pos, time.time()
        )
        loop = replica.loop
        structured = sampling_params.structured_outputs
        needs_compile = structured is not None and structured.compiled is None
        if lora_request is not None:
            state.lora_int_id = lora_request.lora_int_id
        lora_to_load = None
        if lora_request is not None and not self._pin(replica, state, lora_request):
            lora_to_load = lora_request
        if needs_compile or lora_to_load is not None:
            # The id is taken now; the request reaches the loop once its grammar is
            # compiled and its adapter read, in worker threads (an abort meanwhile just
            # ends the state).
            loop.live[request_id] = state
            assert self._task_group is not None  # set while running
            self._task_group.start_soon(self._prepare_then_submit, replica, state, lora_to_load)
        else:
            loop.submit(state)
        self._request_logger.received(state)
        return RequestStream(state, loop.cancel, loop.orphan)

    async def prepare_sampling_params(self, sampling_params: SamplingParams) -> SamplingParams:
        """Compile ``sampling_params``' structured outputs in a worker thread.

        `generate` does this itself, reporting a bad grammar through the stream; calling
        this first surfaces the error here instead (the server answers 400 with it) and
        makes `generate` admit the request at once.

        With cores in Ray actors the compiled grammar cannot travel (it does not
        pickle): the first live replica compiles it here, to check it, and the params
        come back unbound; `generate` has the replica it chooses compile them too (a
        cache hit for the same replica) before the request is admitted.

        Raises:
            ValueError: the schema, regex or grammar does not compile (field named).
            NotSupportedError: the engine's runner has no structured outputs.
            EngineDeadError: the engine died (with cores in Ray actors).
        """
        if sampling_params.structured_outputs is None:
            return sampling_params
        if isinstance(self._core, EngineCore):
            return await self._compile(self._core, sampling_params)
        self._check_running()
        live = next(r for r in self._replicas if r.alive)
        try:
            return await self._compile(live.core, sampling_params)
        except DistributedError as exc:
            raise EngineDeadError(f"the engine replica {live.name} died: {exc}") from exc

    @staticmethod
    async def _compile(core: CoreLike, params: SamplingParams) -> SamplingParams:
        """``params`` compiled for ``core``: bound to its grammar in this process, or
        compiled in the Ray actor that holds it (and left unbound)."""
        if isinstance(core, EngineCore):
            from corral.model.structured import bind_structured_outputs

            return await anyio.to_thread.run_sync(bind_structured_outputs, core.runner, params)
        from corral.distributed.remote_core import RemoteCore

        assert isinstance(core, RemoteCore)
        spec = params.structured_outputs
        if spec is not None and spec.compiled is not None:
            # Bound by an in-process engine: the grammar cannot travel, its spec can.
            params = attrs.evolve(params, structured_outputs=spec.bind(None))
        await anyio.to_thread.run_sync(core.prepare_structured, params)
        return params

    async def _prepare_then_submit(
        self, replica: Replica, state: RequestState, lora: LoRARequest | None
    ) -> None:
        loop = replica.loop
        try:
            params = state.params
            if params.structured_outputs is not None:
                params = await self._compile(replica.core, params)
            if lora is not None:
                manager = replica.lora
                assert manager is not None  # checked by generate
                await anyio.to_thread.run_sync(functools.partial(manager.load, lora, pin=True))
                self._lora_pins[state] = (manager, lora.lora_int_id)
        except (ValueError, NotSupportedError, DistributedError) as exc:
            # A dead replica's own loop dies too (its watcher sees the actor go).
            error: Exception = exc
            if isinstance(exc, DistributedError):
                error = EngineDeadError(f"the engine replica {replica.name} died: {exc}")
                error.__cause__ = exc
            self._unpin(state)
            if not state.done:
                loop.live.pop(state.request_id, None)
                state.end(error=error)
            return
        if state.done or loop.stopping:
            self._unpin(state)
            return
        state.params = params
        loop.submit(state)

    def _check_lora(self, lora_request: LoRARequest | None) -> None:
        if lora_request is None:
            return
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(
                f"lora_request must be a LoRARequest, got {type(lora_request).__name__}"
            )
        if self._lora is None:
            raise ValueError(
                "lora_request: LoRA is not enabled (open the engine with enable_lora=True)"
            )

    def _pin(self, replica: Replica, state: RequestState, lora_request: LoRARequest) -> bool:
        """Pin the adapter on ``replica`` for ``state`` if it is already in host memory
        (no I/O; always False for a replica in a Ray actor)."""
        manager = replica.lora
        assert manager is not None  # checked by generate
        if not manager.pin(lora_request):
            return False
        self._lora_pins[state] = (manager, lora_request.lora_int_id)
        return True

    def _unpin(self, state: RequestState) -> None:
        pinned = self._lora_pins.pop(state, None)
        if pinned is not None:
            manager, lora_int_id = pinned
            manager.unpin(lora_int_id)

    def _request_finished(self, state: RequestState, output: RequestOutput | None) -> None:
        self._unpin(state)
        self._request_logger.finished(state, output)

    async def add_lora(self, lora_request: LoRARequest) -> None:
        """Read an adapter into host memory now, in a worker thread (vLLM's ``add_lora``).

        With several replicas, every live one reads it. With cores in Ray actors, each
        actor reads ``lora_path`` itself: on a multi-node cluster the path must be
        readable on every node.

        Raises:
            ValueError: LoRA is not enabled, or the adapter is bad (missing files, rank
                above ``max_lora_rank``, unknown target module, shapes or modules that
                do not match the base model), with the problem named.
            EngineDeadError: a replica died while reading it.
        """
        self._check_lora(lora_request)
        for replica in self._lora_replicas():
            manager = replica.lora
            await self._on_replica(replica, functools.partial(manager.load, lora_request))

    async def remove_lora(self, lora_int_id: int) -> bool:
        """Drop an adapter from host memory once its live requests have ended (on
        every live replica).

        Returns:
            Whether it was loaded (on any replica).
        """
        await anyio.lowlevel.checkpoint()
        removed = False
        for replica in self._lora_replicas():
            manager = replica.lora
            if isinstance(replica.core, EngineCore):
                removed |= manager.remove(lora_int_id)
            else:
                removed |= await self._on_replica(replica, manager.remove, lora_int_id)
        return removed

    async def list_loras(self) -> list[int]:
        """The ids of the adapters in host memory, least recently used first (with
        several replicas: those of any live replica, in the first one's order)."""
        await anyio.lowlevel.checkpoint()
        ids: dict[int, None] = {}
        for replica in self._lora_replicas():
            manager = replica.lora
            if isinstance(replica.core, EngineCore):
                resident = manager.resident_ids()
            else:
                resident = await self._on_replica(replica, manager.resident_ids)
            ids.update(dict.fromkeys(resident))
        return list(ids)

    def _lora_replicas(self) -> list[Replica]:
        """The live replicas, when LoRA is enabled."""
        return [r for r in self._replicas if r.alive and r.lora is not None]

    @staticmethod
    async def _on_replica(replica: Replica, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` in a worker thread; a dead actor is an `EngineDeadError`."""
        try:
            return await anyio.to_thread.run_sync(call, *args)
        except DistributedError as exc:
            raise EngineDeadError(f"the engine replica {replica.name} died: {exc}") from exc

    # --- beam search ---
    def beam_search(
        self,
        prompt: str | dict[str, Any],
        request_id: str | None,
        params: BeamSearchParams,
    ) -> RequestStream:
        """Beam search (vLLM's ``beam_search``): the stream yields one `RequestOutput`,
        the final one, whose outputs are the ``beam_width`` best sequences, best first.

        Args:
            prompt: A string, ``{"prompt": str}`` or ``{"prompt_token_ids": [...]}``.
            request_id: As for `generate`.
            params: The search (see `BeamSearchParams.to_sampling_params`).

        Raises:
            As `generate`, and NotSupportedError for ``params.temperature > 0``.
        """
        if isinstance(prompt, str):
            prompt = {"prompt": prompt}
        if not isinstance(prompt, dict) or len({"prompt", "prompt_token_ids"} & prompt.keys()) != 1:
            raise ValueError(
                "prompt: must be a string, {'prompt': str} or {'prompt_token_ids': [...]}, "
                f"got {prompt!r}"
            )
        return self.generate(
            prompt.get("prompt"),
            params.to_sampling_params(),
            request_id,
            prompt_token_ids=prompt.get("prompt_token_ids"),
        )

    # --- end beam search ---
    async def abort(self, request_id: str) -> None:
        """Abort a request; a no-op for unknown or already finished ids.

        Its stream ends at once with a final output whose unfinished completions have
        finish_reason "abort" and hold no tokens newer than the stream already offered.
        Its KV blocks are free after the engine's next step.

        A checkpoint, the trio way: when the caller is already cancelled this raises
        the cancellation and aborts nothing; otherwise the abort happens and cannot
        be undone by a cancellation arriving during the call.
        """
        live_id = normalize_request_id(request_id)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if live_id is not None:
            for replica in self._replicas:
                replica.loop.abort(live_id)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def stats(self) -> EngineStats:
        """The engine's queues, cache use and counters as of the last step boundary.

        The engine loop publishes this snapshot after each step (before handing the
        step's outputs to the streams); reading it never touches the core, which may
        be in the middle of the next step in a worker thread. With several replicas,
        the sum over the live ones (a dead replica's cache and queues are gone;
        `replica_stats` has each one's, the dead ones' as of their last step).
        """
        live = [r.loop.stats for r in self._replicas if r.alive]
        return aggregate_stats(live or [r.loop.stats for r in self._replicas])

    async def next_stats(self) -> EngineStats:
        """Wait for the snapshot the engine loop publishes after its next step, and
        return it. An idle engine takes no step: wait only while it has work.

        Raises:
            EngineDeadError: the engine died, before or while waiting.
            EngineClosedError: the engine's block has been left, before or while waiting.
        """
        self._check_running()
        await self._wait_published()
        self._check_running()
        return self.stats()

    async def _wait_published(self) -> None:
        """Wait for the next snapshot of any live replica."""
        loops = [r.loop for r in self._replicas if r.alive]
        if len(loops) == 1:
            await loops[0].wait_published()
            return
        async with anyio.create_task_group() as tg:

            async def wait_one(loop: EngineLoop) -> None:
                await loop.wait_published()
                tg.cancel_scope.cancel()

            for loop in loops:
                tg.start_soon(wait_one, loop)

    async def get_tokenizer(self) -> Any:
        """The Hugging Face tokenizer; None for an engine opened from a core without one."""
        await anyio.lowlevel.checkpoint()
        return self._tokenizer

    async def get_model_config(self) -> ModelConfig | None:
        """The model's `ModelConfig`; None for an engine opened from a bare core."""
        await anyio.lowlevel.checkpoint()
        return self._model_config

    def _check_running(self) -> None:
        fault = self._fault
        if fault is not None:
            raise EngineDeadError(
                f"the engine died: a step raised {type(fault).__name__}: {fault}"
            ) from fault
        if self._state != "running" or all(r.loop.stopping for r in self._replicas):
            raise EngineClosedError(
                "the engine is not running: use it inside `async with open_engine(...)`"
            )

    def _prompt_token_ids(
        self, prompt: str | None, prompt_token_ids: Sequence[int] | None, truncate: int | None
    ) -> list[int]:
        config = self._model_config
        if prompt_token_ids is None and self._tokenizer is None:
            raise ValueError("prompt_token_ids: required, since this engine has no tokenizer")
        if prompt_token_ids is None:
            if config is None:
                raise ValueError(
                    "prompt: text needs the model's config (open the engine with "
                    "model_config) to check the tokens; give prompt_token_ids instead"
                )
            return encode_prompt(
                self._tokenizer,
                prompt,
                None,
                vocab_size=config.vocab_size,
                max_model_len=config.max_model_len,
                truncate_prompt_tokens=truncate,
            )
        if config is not None:
            return validate_prompt(
                prompt_token_ids,
                vocab_size=config.vocab_size,
                max_model_len=config.max_model_len,
                truncate_prompt_tokens=truncate,
            )
        return truncate_prompt(prompt_token_ids, truncate, self._core.config.max_model_len)


@asynccontextmanager
async def open_engine_from_core(
    core: EngineCore,
    *,
    tokenizer: Any = None,
    model_config: ModelConfig | None = None,
    log_requests: bool = True,
    max_log_len: int | None = None,
    log_requests_verbose: bool = False,
    log_stats: bool = True,
    stats_interval: float = 5.0,
    start_engine_loop: bool = True,
) -> AsyncIterator[AsyncEngine]:
    """Run an engine over an already built `EngineCore` (e.g. `corral.testing`'s).

    The block is entered once the engine loop is running. On leaving it, every live
    request is aborted (its stream, if still read elsewhere, ends with finish_reason
    "abort"), the loop stops after the step in flight, and the aborted requests'
    KV blocks are freed; no task or step outlives the block.

    If a step raised, the engine is dead: streams raise `EngineDeadError`, and leaving
    the block re-raises the step's original exception (not an ExceptionGroup), even
    when the block itself ended normally or with an `EngineDeadError`.

    Args:
        core: The core to drive; it must not be used elsewhere while the engine runs.
        tokenizer: Tokenizes text prompts; without one, requests must give token ids.
        model_config: Enables vocabulary checks of prompts (``vocab_size``,
            ``max_model_len``); returned by `AsyncEngine.get_model_config`.
        log_requests: Log one summary line per request when it ends.
        max_log_len: Longest prompt (characters or token ids) that is logged.
        log_requests_verbose: Log each request's prompt and sampling parameters at
            INFO (they go to DEBUG otherwise).
        log_stats: Log throughput, queues and KV cache use every ``stats_interval``
            seconds while the engine works.
        stats_interval: Seconds between two statistics lines.
        start_engine_loop: True (the default) runs the engine loop as a task of the
            engine's own block. False leaves it to the caller: requests queue until
            the caller runs `AsyncEngine.run_engine_loop` in a task group of its own
            (``tg.start_soon(engine.run_engine_loop)``); leaving the engine's block
            stops that loop after its step in flight and waits for it.
    """
    async with _run_engine(
        [core],
        None,
        tokenizer=tokenizer,
        model_config=model_config,
        log_requests=log_requests,
        max_log_len=max_log_len,
        log_requests_verbose=log_requests_verbose,
        log_stats=log_stats,
        stats_interval=stats_interval,
        start_engine_loop=start_engine_loop,
    ) as engine:
        yield engine


@asynccontextmanager
async def _run_engine(
    cores: Sequence[CoreLike],
    replica_names: Sequence[str] | None,
    *,
    tokenizer: Any,
    model_config: ModelConfig | None,
    log_requests: bool = True,
    max_log_len: int | None = None,
    log_requests_verbose: bool = False,
    log_stats: bool = True,
    stats_interval: float = 5.0,
    start_engine_loop: bool = True,
) -> AsyncIterator[AsyncEngine]:
    """`open_engine_from_core` over one or several replicas' cores."""
    if max_log_len is not None and max_log_len < 0:
        raise ValueError(f"max_log_len must be non-negative or None, got {max_log_len!r}")
    engine = AsyncEngine(
        cores,
        tokenizer=tokenizer,
        model_config=model_config,
        request_logger=RequestLogger(
            enabled=log_requests, max_log_len=max_log_len, verbose=log_requests_verbose
        ),
        log_stats=log_stats,
        stats_interval=stats_interval,
        owns_loop=start_engine_loop,
        replica_names=replica_names,
    )
    loops = [r.loop for r in engine._replicas]
    body = FirstError()
    try:
        async with anyio.create_task_group() as tg:
            if start_engine_loop:
                for loop in loops:
                    await tg.start(loop.run)
            watchers: list[anyio.CancelScope] = []
            for replica in engine._replicas:
                if hasattr(replica.core, "wait_dead"):
                    watchers.append(anyio.CancelScope())
                    tg.start_soon(_watch_replica, replica, watchers[-1])
            engine._task_group = tg
            engine._state = "running"
            try:
                # Re-raised below, outside the task group, so that it is not wrapped
                # in an ExceptionGroup.
                with body.catch():
                    yield engine
            finally:
                engine._state = "closed"
                # Closing kills the actors on purpose: that is no replica's death.
                for watcher in watchers:
                    watcher.cancel()
                for loop in loops:
                    loop.stop()
                # An owner-run loop (start_engine_loop=False) lives in another task
                # group: the core is ours again only once it has returned.
                for loop in loops:
                    await loop.wait_exited()
    finally:
        engine._state = "closed"
        for loop in loops:
            await loop.flush()
    faults = [r for r in engine._replicas if not r.alive]
    if faults and len(faults) == len(loops):
        raise loops[0].fault  # type: ignore[misc]
    for replica in faults:
        # The engine served on with its other replicas; this one's error is not lost.
        logger.error(
            "engine replica %s died: %s",
            replica.name,
            engine.replica_health()[replica.name],
            exc_info=replica.loop.fault,
        )
    body.reraise()


@asynccontextmanager
async def open_engine(
    args: EngineArgs | str | None = None,
    /,
    *,
    start_engine_loop: bool = True,
    **engine_args: Any,
) -> AsyncIterator[AsyncEngine]:
    """Load a model and run an engine over it for the duration of the block.

    Call as ``open_engine(model="path", **engine_args)``, ``open_engine("path", ...)``
    or ``open_engine(EngineArgs(...))``. The model loads in a worker thread, so the
    event loop keeps running meanwhile; a cancellation during loading takes effect
    when loading ends. `AsyncEngineArgs` fields (``log_requests``, ``max_log_len``,
    ``disable_log_stats``) set up logging. Leaving the block behaves as in
    `open_engine_from_core`, which also describes ``start_engine_loop``.

    Raises:
        ValueError: invalid engine arguments, or a model that cannot be loaded.
    """
    if isinstance(args, EngineArgs):
        if engine_args:
            raise ValueError("open_engine: give either an EngineArgs or keyword arguments")
        resolved = args
    elif isinstance(args, str):
        resolved = AsyncEngineArgs(model=args, **engine_args)
    elif args is None:
        resolved = AsyncEngineArgs(**engine_args)
    else:
        raise ValueError(f"args must be EngineArgs or a model path, got {type(args).__name__}")
    from corral._compose import build_engine_core

    log_requests, max_log_len, log_stats, verbose = True, None, True, False
    if isinstance(resolved, AsyncEngineArgs):
        log_requests = resolved.log_requests
        verbose = resolved.log_requests_verbose
        max_log_len = resolved.max_log_len
        log_stats = not resolved.disable_log_stats
    logging_args: dict[str, Any] = {
        "log_requests": log_requests,
        "max_log_len": max_log_len,
        "log_requests_verbose": verbose,
        "log_stats": log_stats,
        "start_engine_loop": start_engine_loop,
    }
    if resolved.engine_use_ray or resolved.data_parallel_size > 1:
        async with open_ray_engine(
            functools.partial(build_engine_core, resolved),
            data_parallel_size=resolved.data_parallel_size,
            ray_address=resolved.ray_address,
            **logging_args,
        ) as engine:
            yield engine
        return
    core, tokenizer, model_config = await anyio.to_thread.run_sync(build_engine_core, resolved)
    try:
        async with open_engine_from_core(
            core, tokenizer=tokenizer, model_config=model_config, **logging_args
        ) as engine:
            yield engine
    finally:
        # A runner with processes of its own (tensor-parallel ranks) stops them when the
        # block ends, not whenever the runner happens to be collected.
        shutdown = getattr(core.runner, "shutdown", None)
        if shutdown is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutdown)


@asynccontextmanager
async def open_ray_engine(
    factory: Callable[[], Any],
    *,
    data_parallel_size: int = 1,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    **engine_options: Any,
) -> AsyncIterator[AsyncEngine]:
    """Run an engine whose cores live in Ray actors, one per data-parallel replica.

    ``open_engine`` calls this for ``engine_use_ray=True`` or ``data_parallel_size > 1``.
    The front door (streams, aborts, statistics) stays in this process and task
    group, with the semantics of `open_engine_from_core`; each step is one call into
    the replica's actor, awaited in a worker thread. Leaving the block kills the
    actors and removes their placement group, whatever happened inside.

    Args:
        factory: Builds the core in the actor: returns an `EngineCore`, or what
            `build_engine_core` returns. It travels to the actor by pickle.
        data_parallel_size: Replicas, each an actor with its own core.
        ray_address: The cluster (see `corral.distributed.ray_utils.init_ray`).
        num_cpus: CPUs per replica; None gives each an even share of the cluster.
        engine_options: `open_engine_from_core`'s keyword arguments, but ``core``,
            ``tokenizer`` and ``model_config`` (those come from the actor).

    Raises:
        DistributedError: Ray is missing, the cluster unreachable or too small.
    """
    from corral.distributed.ray_engine import start_engine_actors
    from corral.distributed.ray_utils import init_ray

    # In this thread, not a worker thread: a local Ray instance's processes die with
    # the thread that started them (their parent-death signal is per thread), and
    # anyio retires idle worker threads. Starting one blocks for a few seconds; a
    # program can call `init_ray` itself beforehand.
    init_ray(ray_address)
    with anyio.CancelScope(shield=True):
        # Shielded so that a cancellation cannot orphan actors half-started; it takes
        # effect once they are up, at the next checkpoint (and they are shut down).
        actors = await anyio.to_thread.run_sync(
            functools.partial(
                start_engine_actors,
                factory,
                num_replicas=data_parallel_size,
                ray_address=ray_address,
                num_cpus=num_cpus,
            )
        )
    try:
        first = actors.cores[0].description
        async with _run_engine(
            actors.cores,
            [core.name for core in actors.cores],
            tokenizer=first.tokenizer,
            model_config=first.model_config,
            **engine_options,
        ) as engine:
            yield engine
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(actors.shutdown)


async def _watch_replica(replica: Replica, scope: anyio.CancelScope) -> None:
    """Kill the replica's loop when its actor dies, even while the loop sleeps idle
    (else the router would keep sending it requests that could only fail)."""
    with scope:
        # The thread waits on the actor until it dies or is killed when the engine
        # closes; it is abandoned on cancellation rather than holding the block open.
        error = await anyio.to_thread.run_sync(
            replica.core.wait_dead,  # type: ignore[attr-defined]
            abandon_on_cancel=True,
            limiter=anyio.CapacityLimiter(1),
        )
        if replica.loop.fault is None:
            replica.loop.die(error)


def _lora_manager(core: CoreLike) -> LoRAManager | RemoteLoRA | None:
    """The LoRA adapters of ``core``'s model (None without enable_lora)."""
    if isinstance(core, EngineCore):
        manager: LoRAManager | None = getattr(core.runner, "lora_manager", None)
        return manager
    from corral.distributed.remote_core import RemoteCore

    if isinstance(core, RemoteCore):
        return core.lora
    raise TypeError(f"not an engine core: {type(core).__name__}")


def _has_detokenizer(core: CoreLike) -> bool:
    if isinstance(core, EngineCore):
        return core.detokenizer is not None
    from corral.distributed.remote_core import RemoteCore

    if isinstance(core, RemoteCore):
        return core.has_detokenizer
    raise TypeError(f"not an engine core: {type(core).__name__}")
