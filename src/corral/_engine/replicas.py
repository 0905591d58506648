"""Data-parallel replicas behind one front door: which replica takes a request, and
the statistics of them all.

Each replica is an engine loop over its own core (local or in a Ray actor). The
router sends requests whose first KV block is the same to the same replica, so that
its prefix cache serves them, as long as that replica is not overloaded; every other
request goes to the live replica with the fewest outstanding tokens.
"""

from __future__ import annotations

import collections
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs

from corral.config import CoreConfig
from corral.stats import EngineStats

from .loop import CoreLike, EngineLoop

# Prefixes remembered by the router; the oldest is forgotten beyond this.
_MAX_PREFIXES = 4096


@attrs.define(eq=False)
class Replica:
    """One engine replica: its name (for errors, health and metrics), core and loop,
    and its LoRA adapters (a `LoRAManager`, its `RemoteLoRA` proxy for a core in a Ray
    actor, or None without LoRA)."""

    name: str
    core: CoreLike
    loop: EngineLoop
    config: CoreConfig
    has_detokenizer: bool
    lora: Any = None

    @property
    def alive(self) -> bool:
        return self.loop.fault is None

    def outstanding_tokens(self) -> int:
        """Tokens its live requests may still need computed: prompts not yet done
        and the rest of each completion's ``max_tokens``."""
        total = 0
        max_model_len = self.config.max_model_len
        for state in self.loop.live.values():
            num_prompt = len(state.prompt_token_ids)
            max_tokens = state.params.max_tokens or max_model_len - num_prompt
            latest = state.latest
            generated = 0 if latest is None else sum(len(c.token_ids) for c in latest.outputs)
            pending_prompt = num_prompt if latest is None else 0
            total += pending_prompt + max(0, max_tokens * state.params.best_of - generated)
        return total


class Router:
    """Chooses the replica of each new request (see the module docstring)."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = list(replicas)
        # (LoRA adapter, first block's tokens) -> index of the replica that holds its KV.
        self._prefix_owner: OrderedDict[tuple[int, ...], int] = OrderedDict()

    def choose(self, prompt_token_ids: Sequence[int], lora_int_id: int = 0) -> Replica | None:
        """The replica for a request with this prompt and LoRA adapter (whose KV
        blocks no other adapter shares); None when none is alive."""
        live = [i for i, r in enumerate(self.replicas) if r.alive]
        if len(live) <= 1:
            return self.replicas[live[0]] if live else None
        loads = {i: self.replicas[i].outstanding_tokens() for i in live}
        least = min(live, key=loads.__getitem__)
        config = self.replicas[least].config
        if len(prompt_token_ids) < config.block_size:
            return self.replicas[least]
        key = (lora_int_id, *prompt_token_ids[: config.block_size])
        owner = self._prefix_owner.get(key)
        # Overloaded: more than twice the least loaded replica's work plus one full
        # step's token budget; sharing the cache then costs more than it saves.
        if owner in loads and loads[owner] <= 2 * loads[least] + config.max_num_batched_tokens:
            self._prefix_owner.move_to_end(key)
            return self.replicas[owner]
        self._prefix_owner[key] = least
        self._prefix_owner.move_to_end(key)
        if len(self._prefix_owner) > _MAX_PREFIXES:
            self._prefix_owner.popitem(last=False)
        return self.replicas[least]


def aggregate_stats(stats: Sequence[EngineStats]) -> EngineStats:
    """The statistics of several replicas as one engine's: counts and counters add up,
    the cache usage is that of all their blocks together."""
    if len(stats) == 1:
        return stats[0]
    sums: dict[str, Any] = {}
    for field in attrs.fields(EngineStats):
        if field.name == "kv_cache_usage":
            continue
        values = [getattr(s, field.name) for s in stats]
        if isinstance(values[0], dict):
            # Per-key counts (requests per LoRA adapter) add up key by key.
            merged: collections.Counter[Any] = collections.Counter()
            for value in values:
                merged.update(value)
            sums[field.name] = dict(merged)
        else:
            sums[field.name] = sum(values)
    total = sums["num_total_blocks"]
    usage = 1.0 - sums["num_free_blocks"] / total if total else 0.0
    return EngineStats(kv_cache_usage=usage, **sums)
