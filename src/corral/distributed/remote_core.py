"""`RemoteCore`: an `EngineCore` that lives in a Ray actor, seen from the caller's process.

The engine loop drives a `RemoteCore` exactly as it drives a local core: adds and
aborts between steps, one ``step()`` at a time in a worker thread. Adds and aborts
are buffered here and travel with the next step, so that one round trip to the
actor carries a whole step boundary (commands in, outputs and statistics out).
A dead actor is a step that raised: `step` raises `DistributedError` naming it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from corral.config import CoreConfig
from corral.core.engine_core import EngineCore
from corral.core.validation import validate_request
from corral.errors import DistributedError, NotSupportedError
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats

# What builds a core in the actor: the core alone, or the core with the tokenizer
# and model config the front door needs (what `build_engine_core` returns).
CoreFactory = Callable[[], "EngineCore | tuple[EngineCore, Any, Any]"]

# One queued `EngineCore.add_request` call, as positional arguments.
AddCommand = tuple[str, list[int], SamplingParams, "str | None", "float | None", "int | None"]


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

    It runs with two threads: `watch` blocks in one for the actor's whole life (so
    that the caller learns of its death even while idle), `step` and `describe` run
    in the other, one call at a time, which is the core's single-caller contract.
    """

    def __init__(self, factory: CoreFactory) -> None:
        self._forever = threading.Event()
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
        self, adds: list[AddCommand], aborts: list[str]
    ) -> tuple[list[RequestOutput], EngineStats]:
        """Apply a step boundary's commands, run one step if there is work, and
        return its outputs with the statistics after it."""
        core = self.core
        for request_id, token_ids, params, prompt, arrival_time, prefix_pos in adds:
            core.add_request(request_id, token_ids, params, prompt, arrival_time, prefix_pos)
        if aborts:
            core.abort_request(aborts)
        outputs = core.step() if core.has_unfinished_requests() else []
        return outputs, core.stats()


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
        # Ids the actor's core holds (or will once the queued adds travel), until
        # their final output comes back.
        self._unfinished: set[str] = set()
        self._watch = actor.watch.remote()

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
        if lora_int_id:
            # EngineArgs refuses enable_lora with an engine actor; this is the backstop.
            raise NotSupportedError("lora_request: LoRA adapters cannot reach an engine actor")
        if request_id in self._unfinished:
            raise ValueError(f"request_id {request_id!r} is already in use by a live request")
        token_ids = list(prompt_token_ids)
        error = validate_request(
            self.config, token_ids, params, prefix_pos, has_detokenizer=self.has_detokenizer
        )
        if error is not None:
            raise ValueError(error)
        self._adds.append((request_id, token_ids, params, prompt, arrival_time, prefix_pos))
        self._unfinished.add(request_id)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = (request_id,) if isinstance(request_id, str) else request_id
        self._aborts.extend(rid for rid in ids if rid in self._unfinished)

    def has_unfinished_requests(self) -> bool:
        return bool(self._unfinished)

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
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        adds, aborts = self._adds, self._aborts
        self._adds, self._aborts = [], []
        try:
            outputs, stats = ray.get(self.actor.step.remote(adds, aborts))
        except RayActorError as exc:
            raise self._died(exc) from None
        except RayTaskError as exc:
            # The step itself raised: re-raise that error as the local core would.
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise
        self._stats = stats
        for output in outputs:
            if output.finished:
                self._unfinished.discard(output.request_id)
        return list(outputs)

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
