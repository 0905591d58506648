"""`EngineStats`: a snapshot of the engine's queues, cache and counters (a value type)."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class EngineStats:
    """What `EngineCore.stats()` and `AsyncEngine.stats()` report. Counts are of sequences (each sample of a
    best_of request counts); counters (``num_*_tokens``, ``num_preemptions``,
    ``prefix_cache_*``) are cumulative since the core started.

    Attributes:
        num_running: Sequences holding device blocks and scheduled each step.
        num_waiting: Sequences waiting for admission (new or preempted for recompute).
        num_swapped: Sequences whose blocks sit in the host cache.
        num_unfinished_requests: Requests the core still holds: queued, running, or
            aborted with their final output still to come out of a step.
        num_free_blocks: Device blocks with no reference (cached ones included: they
            are reusable).
        num_total_blocks: Device blocks in the cache.
        kv_cache_usage: ``1 - num_free_blocks / num_total_blocks``.
        num_preemptions: Sequences preempted so far.
        prefix_cache_queries: Tokens of admitted prompts looked up in the prefix cache.
        prefix_cache_hits: Of those, tokens whose KV was found.
        num_prompt_tokens: Prompt tokens computed (recomputation counts again).
        num_generation_tokens: Tokens sampled.
        lora_running: LoRA adapter id -> its running sequences (adapters only).
        lora_waiting: LoRA adapter id -> its waiting or swapped sequences.
    """

    num_running: int
    num_waiting: int
    num_swapped: int
    num_unfinished_requests: int
    num_free_blocks: int
    num_total_blocks: int
    kv_cache_usage: float
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_prompt_tokens: int
    num_generation_tokens: int
    lora_running: dict[int, int] = attrs.field(factory=dict)
    lora_waiting: dict[int, int] = attrs.field(factory=dict)
