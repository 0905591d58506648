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
    """Logs one summary line per request when it ends, and its full prompt on arrival
    only when asked.

    The summary (id, prompt tokens, max tokens, finish reason, timings) goes to INFO.
    The prompt text, token ids and sampling parameters go to INFO with ``verbose`` and
    to DEBUG otherwise: a server's log at its default level should not hold what its
    users wrote. Both are cut to ``max_log_len``.

    Args:
        enabled: False logs nothing.
        max_log_len: Longest prompt (characters) and token id list logged; None: all.
        verbose: Log each request's prompt and sampling parameters at INFO.
    """

    def __init__(self, *, enabled: bool, max_log_len: int | None, verbose: bool = False) -> None:
        self.enabled = enabled
        self.max_log_len = max_log_len
        self.verbose = verbose

    def received(self, state: RequestState) -> None:
        level = logging.INFO if self.verbose else logging.DEBUG
        if not self.enabled or not logger.isEnabledFor(level):
            return
        prompt = state.prompt
        token_ids = state.prompt_token_ids
        if self.max_log_len is not None:
            prompt = None if prompt is None else prompt[: self.max_log_len]
            token_ids = token_ids[: self.max_log_len]
        logger.log(
            level,
            "Received request %s: prompt: %r, sampling_params: %s, prompt_token_ids: %s",
            state.request_id,
            prompt,
            state.params,
            token_ids,
        )

    def finished(self, state: RequestState, output: RequestOutput | None) -> None:
        if not self.enabled:
            return
        head = (
            f"Request {state.request_id}: prompt {len(state.prompt_token_ids)} tokens, "
            f"max_tokens {state.params.max_tokens}"
        )
        now = time.time()
        if output is None:
            logger.info("%s, aborted after %.3fs", head, now - state.arrival_time)
        elif output.error is not None:
            logger.info("%s, rejected: %s", head, output.error)
        else:
            logger.info("%s, %s", head, _outcome(output, now))


def _outcome(output: RequestOutput, now: float) -> str:
    """Finish reasons, generated tokens and timings of a finished request."""
    reasons = ",".join(str(c.finish_reason) for c in output.outputs)
    generated = sum(len(c.token_ids) for c in output.outputs)
    metrics = output.metrics
    parts = [f"finish {reasons}", f"generated {generated} tokens"]
    if metrics is None:
        return ", ".join(parts)
    if metrics.first_scheduled_time is not None:
        parts.append(f"queued {metrics.first_scheduled_time - metrics.arrival_time:.3f}s")
    if metrics.first_token_time is not None:
        parts.append(f"first token {metrics.first_token_time - metrics.arrival_time:.3f}s")
    finished = metrics.finished_time if metrics.finished_time is not None else now
    parts.append(f"total {finished - metrics.arrival_time:.3f}s")
    return ", ".join(parts)


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
        if time.monotonic() - self._last_time >= self.interval:
            self.log_now()

    def log_now(self) -> None:
        """Log the line now, whatever the interval (vLLM's ``do_log_stats``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = max(now - self._last_time, 1e-9)
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
