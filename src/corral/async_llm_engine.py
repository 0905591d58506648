"""`AsyncLLMEngine`: vLLM's async engine API over `open_engine`.

vLLM starts an unowned background task (``start_engine_loop``) on the first
``generate``. Here the loop belongs to the ``async with`` block: entering the
engine loads the model and starts the loop, leaving it aborts what is live and
stops the loop. Code written for vLLM needs one change, the ``async with``.

A facade over `AsyncEngine`, one layer above it: `corral.engine` never imports this.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from corral.beam_search import BeamSearchParams
from corral.config import AsyncEngineArgs
from corral.engine import AsyncEngine, RequestStream, open_engine
from corral.errors import EngineClosedError
from corral.lora.request import LoRARequest
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats

if TYPE_CHECKING:
    from corral.model.config import ModelConfig

_ENGINE_ARG_NAMES = tuple(
    f.name
    for f in attrs.fields(AsyncEngineArgs)
    if f.name not in ("log_requests", "max_log_len", "worker_use_ray", "engine_use_ray")
)


class AsyncLLMEngine:
    """vLLM-compatible async engine; use as ``async with AsyncLLMEngine(...) as engine``.

    The seed's (vLLM 0.3) constructor: ``AsyncLLMEngine(worker_use_ray,
    engine_use_ray, *args, log_requests=True, max_log_len=None,
    start_engine_loop=True, **kwargs)``, where ``args`` and ``kwargs`` are
    `AsyncEngineArgs` fields (positional ones in field order: ``model`` first).
    `from_engine_args` is the usual way in.

    Args:
        worker_use_ray: Run the tensor-parallel ranks as Ray actors (the seed's name
            for ``distributed_executor_backend="ray"``).
        engine_use_ray: Run the engine core in a Ray actor; the front door stays here.
        log_requests: Log each request's arrival and end.
        max_log_len: Longest prompt (characters or token ids) that is logged.
        start_engine_loop: True (the default): the engine loop runs for exactly the
            ``async with`` block, as a task of the engine's own. False: requests
            queue until you run the loop yourself, in a task group you own, with
            ``tg.start_soon(engine.run_engine_loop)``; it returns when the engine's
            block is left (or when you cancel it). Either way no task outlives
            its owner.

    Raises:
        NotSupportedError: an engine argument corral does not support yet.
        ValueError: an unknown or invalid engine argument.
    """

    def __init__(
        self,
        worker_use_ray: bool,
        engine_use_ray: bool,
        *args: Any,
        log_requests: bool = True,
        max_log_len: int | None = None,
        start_engine_loop: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(worker_use_ray, bool) or not isinstance(engine_use_ray, bool):
            raise ValueError(
                "AsyncLLMEngine(worker_use_ray, engine_use_ray, *engine_args, ...): the first "
                "two arguments are booleans; to pass an AsyncEngineArgs use "
                "AsyncLLMEngine.from_engine_args(engine_args)"
            )
        if len(args) > len(_ENGINE_ARG_NAMES):
            raise ValueError(
                f"AsyncLLMEngine takes at most {len(_ENGINE_ARG_NAMES)} positional engine "
                f"arguments, got {len(args)}"
            )
        positional = dict(zip(_ENGINE_ARG_NAMES, args, strict=False))
        twice = sorted(positional.keys() & kwargs.keys())
        if twice:
            raise ValueError(f"AsyncLLMEngine: engine argument(s) {twice} given twice")
        try:
            self.engine_args = AsyncEngineArgs(
                **positional,
                **kwargs,
                worker_use_ray=worker_use_ray,
                engine_use_ray=engine_use_ray,
                log_requests=log_requests,
                max_log_len=max_log_len,
            )
        except TypeError as exc:
            raise ValueError(f"AsyncLLMEngine: {exc}") from None
        self.start_engine_loop = start_engine_loop
        self._stack: AsyncExitStack | None = None
        self._engine: AsyncEngine | None = None

    @classmethod
    def from_engine_args(
        cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True
    ) -> AsyncLLMEngine:
        """Build the engine (the model loads on ``async with``, in a worker thread)."""
        if not isinstance(engine_args, AsyncEngineArgs):
            raise ValueError(
                f"engine_args must be an AsyncEngineArgs, got {type(engine_args).__name__}"
            )
        fields = attrs.asdict(engine_args, recurse=False)
        for name in ("log_requests", "max_log_len", "worker_use_ray", "engine_use_ray"):
            del fields[name]
        return cls(
            engine_args.worker_use_ray,
            engine_args.engine_use_ray,
            log_requests=engine_args.log_requests,
            max_log_len=engine_args.max_log_len,
            start_engine_loop=start_engine_loop,
            **fields,
        )

    @property
    def log_requests(self) -> bool:
        return self.engine_args.log_requests

    @property
    def max_log_len(self) -> int | None:
        return self.engine_args.max_log_len

    @property
    def is_running(self) -> bool:
        """True inside the ``async with`` block while the engine loop is alive."""
        return self._engine is not None and self._engine.is_running

    @property
    def errored(self) -> bool:
        """True once a step raised: the engine is dead for good."""
        return self._engine is not None and self._engine.errored

    @property
    def is_stopped(self) -> bool:
        """True once the engine died or its ``async with`` block was left."""
        return self._engine is not None and self._engine.is_stopped

    async def check_health(self) -> None:
        """Return if the engine can serve requests.

        Raises:
            EngineDeadError: the engine died (the step's error is ``__cause__``).
            EngineClosedError: the engine is not inside its ``async with`` block.
        """
        await self._running().check_health()

    async def do_log_stats(self) -> None:
        """Log throughput, queues and cache use now (unless ``disable_log_stats``)."""
        await self._running().do_log_stats()

    async def run_engine_loop(self) -> None:
        """Run the engine loop in your own task group (``start_engine_loop=False`` only):
        ``tg.start_soon(engine.run_engine_loop)``. See `AsyncEngine.run_engine_loop`."""
        await self._running().run_engine_loop()

    async def __aenter__(self) -> AsyncLLMEngine:
        if self._stack is not None:
            raise RuntimeError("this AsyncLLMEngine has already been entered")
        stack = AsyncExitStack()
        self._engine = await stack.enter_async_context(
            open_engine(self.engine_args, start_engine_loop=self.start_engine_loop)
        )
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        return await self._stack.__aexit__(exc_type, exc, tb)

    def generate(
        self,
        prompt: str | None,
        sampling_params: SamplingParams,
        request_id: str,
        prompt_token_ids: Sequence[int] | None = None,
        lora_request: LoRARequest | None = None,
        prefix_pos: int | None = None,
    ) -> RequestStream:
        """Submit a request; iterate the result with ``async for`` (see `AsyncEngine.generate`)."""
        return self._running().generate(
            prompt,
            sampling_params,
            request_id,
            prompt_token_ids=prompt_token_ids,
            lora_request=lora_request,
            prefix_pos=prefix_pos,
        )

    def beam_search(
        self,
        prompt: str | dict[str, Any],
        request_id: str | None,
        params: BeamSearchParams,
    ) -> RequestStream:
        """Beam search; the stream yields one final output (see `AsyncEngine.beam_search`)."""
        return self._running().beam_search(prompt, request_id, params)

    async def abort(self, request_id: str) -> None:
        """Abort a request; a no-op for unknown or finished ids."""
        await self._running().abort(request_id)

    async def add_lora(self, lora_request: LoRARequest) -> None:
        """Read a LoRA adapter into host memory now (see `AsyncEngine.add_lora`)."""
        await self._running().add_lora(lora_request)

    async def remove_lora(self, lora_int_id: int) -> bool:
        """Drop an adapter once its requests have ended (see `AsyncEngine.remove_lora`)."""
        return await self._running().remove_lora(lora_int_id)

    async def list_loras(self) -> list[int]:
        """Ids of the adapters in host memory, least recently used first."""
        return await self._running().list_loras()

    async def get_tokenizer(self) -> Any:
        return await self._running().get_tokenizer()

    async def get_model_config(self) -> ModelConfig:
        """The loaded model's `ModelConfig`."""
        config = await self._running().get_model_config()
        assert config is not None  # open_engine always loads a model
        return config

    def stats(self) -> EngineStats:
        return self._running().stats()

    def _running(self) -> AsyncEngine:
        if self._engine is None:
            raise EngineClosedError(
                "AsyncLLMEngine is not running: use `async with "
                "AsyncLLMEngine.from_engine_args(args) as engine`"
            )
        return self._engine
