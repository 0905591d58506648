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
from typing import Any

from corral.config import AsyncEngineArgs
from corral.engine import AsyncEngine, RequestStream, open_engine
from corral.errors import EngineClosedError, NotSupportedError
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats


class AsyncLLMEngine:
    """vLLM-compatible async engine; use as ``async with AsyncLLMEngine.from_engine_args(args)``.

    Args:
        engine_args: The model, cache, scheduling and logging settings
            (``log_requests``, ``max_log_len``, ``disable_log_stats``).
        start_engine_loop: Accepted for vLLM compatibility; only True is meaningful,
            since the loop always runs for exactly the ``async with`` block.

    Raises:
        NotSupportedError: ``start_engine_loop=False``.
    """

    def __init__(self, engine_args: AsyncEngineArgs, *, start_engine_loop: bool = True) -> None:
        if not isinstance(engine_args, AsyncEngineArgs):
            raise ValueError(
                f"engine_args must be an AsyncEngineArgs, got {type(engine_args).__name__}"
            )
        if not start_engine_loop:
            raise NotSupportedError(
                "start_engine_loop=False: the engine loop runs for the `async with` block "
                "and cannot be started later"
            )
        self.engine_args = engine_args
        self._stack: AsyncExitStack | None = None
        self._engine: AsyncEngine | None = None

    @classmethod
    def from_engine_args(
        cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True
    ) -> AsyncLLMEngine:
        """Build the engine (the model loads on ``async with``, in a worker thread)."""
        return cls(engine_args, start_engine_loop=start_engine_loop)

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

    async def __aenter__(self) -> AsyncLLMEngine:
        if self._stack is not None:
            raise RuntimeError("this AsyncLLMEngine has already been entered")
        stack = AsyncExitStack()
        self._engine = await stack.enter_async_context(open_engine(self.engine_args))
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
        lora_request: object = None,
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

    async def abort(self, request_id: str) -> None:
        """Abort a request; a no-op for unknown or finished ids."""
        await self._running().abort(request_id)

    async def get_tokenizer(self) -> Any:
        return await self._running().get_tokenizer()

    async def get_model_config(self) -> Any:
        return await self._running().get_model_config()

    def stats(self) -> EngineStats:
        return self._running().stats()

    def _running(self) -> AsyncEngine:
        if self._engine is None:
            raise EngineClosedError(
                "AsyncLLMEngine is not running: use `async with "
                "AsyncLLMEngine.from_engine_args(args) as engine`"
            )
        return self._engine
