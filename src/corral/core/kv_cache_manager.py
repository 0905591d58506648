"""Block tables of sequences: allocation, prefix-cache hits, copy-on-write and swapping.

The manager changes a sequence's ``block_table`` and ``num_computed_tokens`` and
records the block movements the runner must apply (``(src, dst)`` pairs) in lists
the caller passes in. It never decides *who* gets blocks; the scheduler does.
"""

from __future__ import annotations

from corral.config import CoreConfig
from corral.core.block_pool import BlockPool, HostPool
from corral.core.sequence import Sequence


class KVCacheManager:
    """Owns the device `BlockPool` and the `HostPool` of one engine."""

    def __init__(self, config: CoreConfig) -> None:
        self.block_size = config.block_size
        self.pool = BlockPool(config.num_kv_blocks)
        self.host_pool = HostPool(config.num_host_blocks)
        self.enable_prefix_caching = config.enable_prefix_caching
        # Prefix-cache statistics in tokens, like vLLM: tokens looked up, tokens found.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _extend_hashes(self, seq: Sequence, num_blocks: int) -> None:
        bs = self.block_size
        hashes = seq.block_hashes
        token_ids = seq.token_ids
        root = _chain_root(seq)
        for i in range(len(hashes), num_blocks):
            parent = hashes[i - 1] if i else root
            hashes.append(hash((parent, tuple(token_ids[i * bs : (i + 1) * bs]))))

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks of the prefix cache that hold the leading full blocks of ``seq``.

        Looks at most at ``len(token_ids) - 1`` tokens, so the last token is always
        computed (its logits are needed). Requests asking for prompt logprobs get no
        hits. Takes no references: pass the result to `admit`.
        """
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return []
        bs = self.block_size
        num_full = (len(seq.token_ids) - 1) // bs
        self._extend_hashes(seq, num_full)
        hashes = seq.block_hashes
        token_ids = seq.token_ids
        blocks: list[int] = []
        parent = _chain_root(seq)
        for i in range(num_full):
            block = self.pool.lookup(hashes[i], parent, tuple(token_ids[i * bs : (i + 1) * bs]))
            if block is None:
                break
            blocks.append(block)
            parent = hashes[i]
        return blocks

    def admit(self, seq: Sequence, cached: list[int], num_new_tokens: int, reserve: int) -> bool:
        """Give a waiting sequence its cached prefix and blocks for ``num_new_tokens``.

        Succeeds only if ``reserve`` blocks stay free afterwards; otherwise changes nothing.
        """
        pool = self.pool
        revived = sum(1 for b in cached if pool.ref_counts[b] == 0)
        num_cached_tokens = len(cached) * self.block_size
        need = self.num_blocks_for(num_cached_tokens + num_new_tokens) - len(cached)
        if pool.num_free - revived - need < reserve:
            return False
        for block in cached:
            pool.incref(block)
        seq.block_table = cached
        seq.num_computed_tokens = num_cached_tokens
        seq.num_cached_blocks = len(cached)
        for _ in range(need):
            cached.append(pool.allocate())
        if self.enable_prefix_caching and seq.params.prompt_logprobs is None:
            self.prefix_cache_queries += len(seq.token_ids)
            self.prefix_cache_hits += num_cached_tokens
        return True

    def append_slots(
        self, seq: Sequence, num_new_tokens: int, blocks_to_copy: list[tuple[int, int]]
    ) -> bool:
        """Make room for the next ``num_new_tokens`` tokens of a running sequence.

        If the block the first new token lands in is shared (after a fork), the
        sequence gets a private copy and ``(src, dst)`` goes to ``blocks_to_copy``.
        Returns False, changing nothing, when the free blocks do not suffice.
        """
        pool = self.pool
        block_table = seq.block_table
        start = seq.num_computed_tokens
        need = -(-(start + num_new_tokens) // self.block_size) - len(block_table)
        first = start // self.block_size
        shared = first < len(block_table) and pool.ref_counts[block_table[first]] > 1
        if need + shared > pool.num_free:
            return False
        if shared:
            src = block_table[first]
            dst = pool.allocate()
            blocks_to_copy.append((src, dst))
            block_table[first] = dst
            # The runner copies from src before the forward pass; should its other
            # holders be preempted later in this step, src must not be reused as a
            # destination of the same step.
            pool.hold(src)
            pool.free(src)
        for _ in range(need):
            block_table.append(pool.allocate())
        return True

    def release_held(self) -> None:
        """End the step's holds on copy-on-write sources; call once per scheduled step."""
        self.pool.release_held()

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Offer the sequence's newly computed full blocks to the prefix cache."""
        bs = self.block_size
        num_full = seq.num_computed_tokens // bs
        start = seq.num_cached_blocks
        if num_full <= start:
            return
        self._extend_hashes(seq, num_full)
        hashes = seq.block_hashes
        token_ids = seq.token_ids
        block_table = seq.block_table
        for i in range(start, num_full):
            self.pool.cache(
                block_table[i],
                hashes[i],
                hashes[i - 1] if i else _chain_root(seq),
                tuple(token_ids[i * bs : (i + 1) * bs]),
            )
        seq.num_cached_blocks = num_full

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let ``child`` (a copy of ``parent``'s table) share every block of ``parent``."""
        for block in child.block_table:
            self.pool.incref(block)

    def _sticky_blocks(self, seq: Sequence) -> int:
        prefix_pos = seq.request.prefix_pos
        return 0 if not prefix_pos else prefix_pos // self.block_size

    def free(self, seq: Sequence) -> None:
        """Release a sequence's device blocks and forget its KV (tokens are kept)."""
        sticky = self._sticky_blocks(seq)
        block_table = seq.block_table
        # Tail blocks first, so that they are evicted before the shared-prefix ones.
        for i in range(len(block_table) - 1, -1, -1):
            self.pool.free(block_table[i], i < sticky)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_cached_blocks = 0

    def free_host(self, seq: Sequence) -> None:
        """Release a swapped-out sequence's host blocks."""
        for block in seq.block_table:
            self.host_pool.free(block)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_cached_blocks = 0

    def can_swap_out(self, seq: Sequence) -> bool:
        return len(seq.block_table) <= self.host_pool.num_free

    def swap_out(self, seq: Sequence, blocks_to_swap_out: list[tuple[int, int]]) -> None:
        """Move the sequence's blocks to the host pool; its table then holds host ids."""
        sticky = self._sticky_blocks(seq)
        host_table = []
        for i, block in enumerate(seq.block_table):
            host = self.host_pool.allocate()
            blocks_to_swap_out.append((block, host))
            host_table.append(host)
            self.pool.free(block, i < sticky)
        seq.block_table = host_table

    def swap_in_cost(self, seq: Sequence, num_new_tokens: int) -> int:
        """Device blocks a swapped-out sequence needs to resume with ``num_new_tokens``."""
        return max(
            len(seq.block_table),
            self.num_blocks_for(seq.num_computed_tokens + num_new_tokens),
        )

    def swap_in(self, seq: Sequence, blocks_to_swap_in: list[tuple[int, int]]) -> None:
        """Move the sequence's blocks back to the device (the caller checked the room)."""
        device_table = []
        for host in seq.block_table:
            block = self.pool.allocate()
            blocks_to_swap_in.append((host, block))
            device_table.append(block)
            self.host_pool.free(host)
        seq.block_table = device_table
        # Offer the copies again: the originals may have been evicted meanwhile.
        seq.num_cached_blocks = 0


def _chain_root(seq: Sequence) -> int | None:
    """The parent hash of a sequence's first block: its LoRA adapter's, so that two
    adapters (or an adapter and the base model) never share KV blocks."""
    return hash(("lora", seq.lora_int_id)) if seq.lora_int_id else None
