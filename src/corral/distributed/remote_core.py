"""`RemoteCore`: an `EngineCore` that lives in a Ray actor, seen from the caller's process.

The engine loop drives a `RemoteCore` exactly as it drives a local core: adds and
aborts between steps, one ``step()`` at a time in a worker thread. Adds and aborts
are buffered here and travel with the next step, so that one round trip to the
actor carries a whole step boundary (commands in, outputs and statistics out).
A dead actor is a step that raised: `step` raises `DistributedError` naming it.

What must happen before a request is admitted runs in the actor's own "prepare"
thread, so that it never waits behind a step: compiling a structured-output grammar
(`prepare_structured`: the compiled grammar cannot be pickled, so the params travel
unbound and the actor's runner finds the grammar in its cache, by the spec's key) and
reading a LoRA adapter from disk (`RemoteLoRA.load`: the path is read by the actor's
process, so on a multi-node cluster it must be readable on every node).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from corral.config import CoreConfig
from corral.core.engine_core import EngineCore
from corral.core.validation import validate_request
from corral.errors import DistributedError
from corral.lora.request import LoRARequest
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats

from .output_deltas import OutputDecoder, OutputEncoder, RequestDelta

# What builds a core in the actor: the core alone, or the core with the tokenizer
# and model config the front door needs (what `build_engine_core` returns).
CoreFactory = Callable[[], "EngineCore | tuple[EngineCore, Any, Any]"]

# One queued `EngineCore.add_request` call, as positional arguments.
AddCommand = tuple[str, list[int], SamplingParams, "str | None", "float | None", "int | None", int]

# The actor's thread pools (Ray concurrency groups): `watch` blocks one for the actor's
# whole life; `prepare` compiles grammars and reads adapters while a step runs in the
# default group's one thread (the core's single caller).
CONCURRENCY_GROUPS = {"watch": 1, "prepare": 1}


@attrs.frozen
class CoreDescription:
    """What the front door learns of a remote core once, when it has been built."""

    config: CoreConfig
    has_detokenizer: bool
    stats: EngineStats
    tokenizer: Any
    model_config: Any
    node_id: str


class EngineCoreActor:
    """The body of the Ray actor that owns an `EngineCore` (made remote by `ray_engine`).

    It runs with three threads (see `CONCURRENCY_GROUPS`): `watch` blocks in one for
    the actor's whole life (so that the caller learns of its death even while idle);
    `step` and `describe` run in another, one call at a time, which is the core's
    single-caller contract; the LoRA and structured-output calls run in the third.
    The runner's `StructuredOutputs` and `LoRAManager` are safe to call from it while a
    step runs, as the in-process front door calls them from worker threads.
    """

    def __init__(self, factory: CoreFactory) -> None:
        self._forever = threading.Event()
        self._encoder = OutputEncoder()
        built = factory()
        if isinstance(built, tuple):
            self.core, self._tokenizer, self._model_config = built
        else:
            self.core, self._tokenizer, self._model_config = built, None, None

    def describe(self) -> CoreDescription:
        import ray

        core = self.core
        return CoreDescription(
            core.config,
            core.detokenizer is not None,
            core.stats(),
            self._tokenizer,
            self._model_config,
            ray.get_runtime_context().get_node_id(),
        )

    def watch(self) -> None:
        """Never returns: a call pending on it fails when the actor dies."""
        self._forever.wait()

    def step(
        self, adds: list[AddCommand], aborts: list[str], unpins: list[int]
    ) -> tuple[list[RequestDelta], EngineStats]:
        """Apply a step boundary's commands, run one step if there is work, and
        return its outputs (as deltas, see `output_deltas`) with the statistics
        after it."""
        core, encoder = self.core, self._encoder
        for request_id, token_ids, params, prompt, arrival_time, prefix_pos, lora in adds:
            core.add_request(request_id, token_ids, params, prompt, arrival_time, prefix_pos, lora)
            encoder.add(request_id, params.use_beam_search)
        if aborts:
            core.abort_request(aborts)
        self._unpin(unpins)
        outputs = core.step() if core.has_unfinished_requests() else []
        return encoder.encode(outputs), core.stats()

    def prepare_structured(self, params: SamplingParams) -> None:
        """Compile ``params``' structured outputs into the runner's grammar cache.

        Raises:
            ValueError: the schema, regex or grammar does not compile.
            NotSupportedError: the runner has no structured outputs.
        """
        from corral.model.structured import bind_structured_outputs

        # The bound copy holds the compiled grammar, which cannot travel back; the
        # cache keeps it for the step, which looks it up by the spec's key.
        bind_structured_outputs(self.core.runner, params)

    def load_lora(self, request: LoRARequest, pin: bool, unpins: list[int]) -> None:
        """`LoRAManager.load` in the actor, after the queued unpins."""
        self._unpin(unpins)
        self._lora_manager().load(request, pin=pin)

    def remove_lora(self, lora_int_id: int, unpins: list[int]) -> bool:
        """`LoRAManager.remove` in the actor, after the queued unpins."""
        self._unpin(unpins)
        return self._lora_manager().remove(lora_int_id)

    def list_loras(self, unpins: list[int]) -> list[int]:
        """`LoRAManager.resident_ids` in the actor, after the queued unpins."""
        self._unpin(unpins)
        return self._lora_manager().resident_ids()

    def _unpin(self, unpins: list[int]) -> None:
        if unpins:
            manager = self._lora_manager()
            for lora_int_id in unpins:
                manager.unpin(lora_int_id)

    def _lora_manager(self) -> Any:
        manager = getattr(self.core.runner, "lora_manager", None)
        if manager is None:
            raise ValueError(
                "lora_request: LoRA is not enabled (start the engine with enable_lora)"
            )
        return manager


class RemoteCore:
    """The caller-side handle of an `EngineCoreActor`, with the core methods the
    engine loop calls.

    Args:
        actor: The Ray actor handle.
        name: The actor's name, used in errors.
        description: What the actor's `describe` returned.
    """

    def __init__(self, actor: Any, name: str, description: CoreDescription) -> None:
        self.actor = actor
        self.name = name
        self.description = description
        self.node_id = description.node_id
        self.config = description.config
        self.has_detokenizer = description.has_detokenizer
        self._stats = description.stats
        self._adds: list[AddCommand] = []
        self._aborts: list[str] = []
        self.lora = RemoteLoRA(self) if self.config.max_loras else None
        # Holds the requests the actor's core holds (or will once the queued adds
        # travel), until their final output comes back.
        self._decoder = OutputDecoder()
        self._watch = actor.watch.options(concurrency_group="watch").remote()

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
        arrival_time: float | None = None,
        prefix_pos: int | None = None,
        lora_int_id: int = 0,
    ) -> None:
        """Queue an add for the next step; raises what `EngineCore.add_request` raises."""
        if request_id in self._decoder:
            raise ValueError(f"request_id {request_id!r} is already in use by a live request")
        if lora_int_id and self.lora is None:
            raise ValueError(
                "lora_request: LoRA is not enabled (start the engine with enable_lora)"
            )
        token_ids = list(prompt_token_ids)
        error = validate_request(
            self.config, token_ids, params, prefix_pos, has_detokenizer=self.has_detokenizer
        )
        if error is not None:
            raise ValueError(error)
        self._adds.append(
            (request_id, token_ids, params, prompt, arrival_time, prefix_pos, lora_int_id)
        )
        self._decoder.add(request_id, prompt, token_ids)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = (request_id,) if isinstance(request_id, str) else request_id
        self._aborts.extend(rid for rid in ids if rid in self._decoder)

    def has_unfinished_requests(self) -> bool:
        return bool(self._decoder)

    def stats(self) -> EngineStats:
        """The statistics as of the last step (nothing is asked of the actor)."""
        return self._stats

    def step(self) -> list[RequestOutput]:
        """Send the queued commands, run one step in the actor and wait for it
        (blocking: the engine loop calls this in a worker thread).

        Raises:
            DistributedError: the actor died (its name is in the message).
            Exception: what the actor's step raised, as raised there.
        """
        adds, aborts = self._adds, self._aborts
        self._adds, self._aborts = [], []
        unpins = self.lora.take_unpins() if self.lora is not None else []
        deltas, stats = self.call(self.actor.step, adds, aborts, unpins)
        self._stats = stats
        return self._decoder.decode(deltas)

    def prepare_structured(self, params: SamplingParams) -> None:
        """Compile ``params``' structured outputs in the actor, where its steps will
        find the grammar (blocking: call it in a worker thread).

        Raises:
            ValueError: the schema, regex or grammar does not compile (field named).
            NotSupportedError: the actor's runner has no structured outputs.
            DistributedError: the actor died.
        """
        self.call(self.actor.prepare_structured, params, group="prepare")

    def call(self, method: Any, *args: Any, group: str | None = None) -> Any:
        """Call an actor method and wait for it (blocking), in the concurrency group
        ``group`` (None: the default one, the core's).

        Raises:
            DistributedError: the actor died (its name is in the message).
            Exception: what the method raised, as raised there.
        """
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if group is not None:
            method = method.options(concurrency_group=group)
        try:
            return ray.get(method.remote(*args))
        except RayActorError as exc:
            raise self._died(exc) from None
        except RayTaskError as exc:
            # The method itself raised: re-raise that error as a local call would.
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def wait_dead(self) -> DistributedError:
        """Block until the actor dies; return the error that names it."""
        import ray
        from ray.exceptions import RayActorError

        try:
            ray.get(self._watch)
        except RayActorError as exc:
            return self._died(exc)
        raise AssertionError("EngineCoreActor.watch returned")

    def _died(self, exc: BaseException) -> DistributedError:
        return DistributedError(
            f"the engine actor {self.name!r} died: {type(exc).__name__}: {_first_line(exc)}"
        )


class RemoteLoRA:
    """The `LoRAManager` of an engine actor, with the methods the front door calls.

    Every call but `unpin` waits for the actor (blocking: call them in a worker
    thread). An unpin is queued and travels with the actor's next call, step or LoRA
    call, ahead of it; an adapter stays pinned a little longer, never shorter.
    """

    def __init__(self, core: RemoteCore) -> None:
        self._core = core
        # Appended in the event loop's thread, drained in a worker thread: deque's
        # append and popleft are atomic.
        self._unpins: collections.deque[int] = collections.deque()

    def pin(self, request: LoRARequest) -> bool:
        """Always False: pinning needs a round trip to the actor, which the event loop
        must not wait for; `load` with ``pin=True`` pins in a worker thread instead."""
        return False

    def load(self, request: LoRARequest, *, pin: bool = False) -> None:
        """Read the adapter in the actor (from ``request.lora_path``, on its node).

        Raises:
            ValueError: a bad adapter, as `LoRAManager.load` says.
            DistributedError: the actor died.
        """
        core = self._core
        core.call(core.actor.load_lora, request, pin, self.take_unpins(), group="prepare")

    def unpin(self, lora_int_id: int) -> None:
        self._unpins.append(lora_int_id)

    def remove(self, lora_int_id: int) -> bool:
        core = self._core
        removed: bool = core.call(
            core.actor.remove_lora, lora_int_id, self.take_unpins(), group="prepare"
        )
        return removed

    def resident_ids(self) -> list[int]:
        core = self._core
        ids: list[int] = core.call(core.actor.list_loras, self.take_unpins(), group="prepare")
        return ids

    def take_unpins(self) -> list[int]:
        """The queued unpins, removed from the queue."""
        unpins = []
        while self._unpins:
            unpins.append(self._unpins.popleft())
        return unpins


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
