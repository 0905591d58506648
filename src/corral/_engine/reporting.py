"""Request and statistics logging of the async engine, in vLLM's words."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from corral.outputs import RequestOutput
from corral.stats import EngineStats

from .stream import RequestState

logger = logging.getLogger("corral.engine")


class RequestLogger:
    """Logs each request's arrival (prompt and token ids cut to `max_log_len`) and end.

    Args:
        enabled: False logs nothing.
        max_log_len: Longest prompt (characters) and token id list logged; None: all.
    """

    def __init__(self, *, enabled: bool, max_log_len: int | None) -> None:
        self.enabled = enabled
        self.max_log_len = max_log_len

    def received(self, state: RequestState) -> None:
        if not self.enabled:
            return
        prompt = state.prompt
        token_ids = state.prompt_token_ids
        if self.max_log_len is not None:
            prompt = None if prompt is None else prompt[: self.max_log_len]
            token_ids = token_ids[: self.max_log_len]
        logger.info(
            "Received request %s: prompt: %r, sampling_params: %s, prompt_token_ids: %s",
            state.request_id,
            prompt,
            state.params,
            token_ids,
        )

    def finished(self, state: RequestState, output: RequestOutput | None) -> None:
        if not self.enabled:
            return
        if output is None:
            logger.info("Aborted request %s.", state.request_id)
        elif output.error is not None:
            logger.info("Rejected request %s: %s", state.request_id, output.error)
        else:
            logger.info("Finished request %s.", state.request_id)


class StatsLogger:
    """Logs throughput, queue lengths and KV cache usage every `interval` seconds of
    engine activity (checked after each step, so an idle engine stays quiet).

    Args:
        stats: Reads the core's counters.
        interval: Seconds between two log lines.
        enabled: False logs nothing (and never reads the stats).
    """

    def __init__(
        self, stats: Callable[[], EngineStats], *, interval: float = 5.0, enabled: bool = True
    ) -> None:
        if interval <= 0:
            raise ValueError(f"stats_interval must be > 0 seconds, got {interval!r}")
        self._stats = stats
        self.interval = interval
        self.enabled = enabled
        self._last_time = time.monotonic()
        self._last_prompt_tokens = 0
        self._last_generation_tokens = 0

    def after_step(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self._last_time
        if elapsed < self.interval:
            return
        stats = self._stats()
        prompt_rate = (stats.num_prompt_tokens - self._last_prompt_tokens) / elapsed
        generation_rate = (stats.num_generation_tokens - self._last_generation_tokens) / elapsed
        self._last_time = now
        self._last_prompt_tokens = stats.num_prompt_tokens
        self._last_generation_tokens = stats.num_generation_tokens
        logger.info(
            "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
            "Running: %d reqs, Swapped: %d reqs, Pending: %d reqs, KV cache usage: %.1f%%, "
            "Prefix cache hit rate: %.1f%%",
            prompt_rate,
            generation_rate,
            stats.num_running,
            stats.num_swapped,
            stats.num_waiting,
            100.0 * stats.kv_cache_usage,
            100.0 * stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1),
        )
