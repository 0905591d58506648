"""`EngineStats`: a snapshot of the core's queues, cache and counters."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class EngineStats:
    """What `EngineCore.stats()` reports. Counts are of sequences (each sample of a
    best_of request counts); counters (``num_*_tokens``, ``num_preemptions``,
    ``prefix_cache_*``) are cumulative since the core started.

    Attributes:
        num_running: Sequences holding device blocks and scheduled each step.
        num_waiting: Sequences waiting for admission (new or preempted for recompute).
        num_swapped: Sequences whose blocks sit in the host cache.
        num_free_blocks: Device blocks with no reference (cached ones included: they
            are reusable).
        num_total_blocks: Device blocks in the cache.
        kv_cache_usage: ``1 - num_free_blocks / num_total_blocks``.
        num_preemptions: Sequences preempted so far.
        prefix_cache_queries: Tokens of admitted prompts looked up in the prefix cache.
        prefix_cache_hits: Of those, tokens whose KV was found.
        num_prompt_tokens: Prompt tokens computed (recomputation counts again).
        num_generation_tokens: Tokens sampled.
    """

    num_running: int
    num_waiting: int
    num_swapped: int
    num_free_blocks: int
    num_total_blocks: int
    kv_cache_usage: float
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_prompt_tokens: int
    num_generation_tokens: int
