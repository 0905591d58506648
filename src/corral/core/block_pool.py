"""Reference-counted KV blocks with an LRU free queue and a verified prefix cache.

Every device block is either referenced (``ref_counts[b] > 0``) or in exactly one
free queue. A free block may still be *cached*: its KV belongs to a full block of
tokens, recorded under a hash chained on the parent block's hash. Such a block can
be revived by a prefix-cache hit until it is handed out again, which evicts it.

Eviction order: uncached free blocks first, then cached ones least recently freed
first, and last the "sticky" cached blocks that a request marked with ``prefix_pos``.
"""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    """The device blocks ``0 .. num_blocks - 1``."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        # Head is evicted first. OrderedDict gives O(1) pop at the head and O(1)
        # removal from the middle when a hit revives a block.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._sticky: OrderedDict[int, None] = OrderedDict()
        self._hash_of: list[int | None] = [None] * num_blocks
        # What a hit must match besides the hash: (parent hash, token ids).
        self._key_of: list[tuple[int | None, tuple[int, ...]] | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}
        # Blocks that must not be handed out before `release_held` (pending copy
        # sources); those whose count fell to zero meanwhile wait here with their
        # sticky flag instead of in a free queue.
        self._held: set[int] = set()
        self._held_free: dict[int, bool] = {}

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._sticky)

    def allocate(self) -> int:
        """A block with reference count 1, evicting its cached content if any."""
        if self._free:
            block, _ = self._free.popitem(last=False)
        elif self._sticky:
            block, _ = self._sticky.popitem(last=False)
        else:
            raise RuntimeError("BlockPool.allocate: no free block (the caller must check)")
        block_hash = self._hash_of[block]
        if block_hash is not None:
            del self._cached[block_hash]
            self._hash_of[block] = None
            self._key_of[block] = None
        self.ref_counts[block] = 1
        return block

    def incref(self, block: int) -> None:
        """Add a reference; revives the block if it was free (a prefix-cache hit)."""
        if self.ref_counts[block] == 0:
            if block in self._free:
                del self._free[block]
            elif block in self._sticky:
                del self._sticky[block]
            else:
                del self._held_free[block]
        self.ref_counts[block] += 1

    def free(self, block: int, sticky: bool = False) -> None:
        """Drop a reference. A block reaching zero joins a free queue.

        Args:
            block: The block id.
            sticky: Keep the block, if cached, behind all other free blocks.
        """
        ref = self.ref_counts[block] - 1
        if ref < 0:
            raise RuntimeError(f"BlockPool.free: block {block} is already free")
        self.ref_counts[block] = ref
        if ref == 0:
            if block in self._held:
                self._held_free[block] = sticky
            else:
                self._enqueue(block, sticky)

    def _enqueue(self, block: int, sticky: bool) -> None:
        if self._hash_of[block] is None:
            # Nothing worth keeping: hand it out before any cached block.
            self._free[block] = None
            self._free.move_to_end(block, last=False)
        elif sticky:
            self._sticky[block] = None
        else:
            self._free[block] = None

    def hold(self, block: int) -> None:
        """Keep ``block`` from being handed out until `release_held`, even if freed."""
        self._held.add(block)

    def release_held(self) -> None:
        """End every hold; held blocks that were freed meanwhile become free now."""
        for block, sticky in self._held_free.items():
            self._enqueue(block, sticky)
        self._held.clear()
        self._held_free.clear()

    def cache(
        self, block: int, block_hash: int, parent_hash: int | None, tokens: tuple[int, ...]
    ) -> None:
        """Record a full, computed block in the prefix cache (first writer wins)."""
        if block_hash in self._cached or self._hash_of[block] is not None:
            return
        self._cached[block_hash] = block
        self._hash_of[block] = block_hash
        self._key_of[block] = (parent_hash, tokens)

    def lookup(
        self, block_hash: int, parent_hash: int | None, tokens: tuple[int, ...]
    ) -> int | None:
        """The cached block holding ``tokens`` after the parent ``parent_hash``, if any.

        A hit needs the stored parent hash and token ids to match, not just the hash.
        """
        block = self._cached.get(block_hash)
        if block is None or self._key_of[block] != (parent_hash, tokens):
            return None
        return block

    def cached_hash(self, block: int) -> int | None:
        return self._hash_of[block]

    def cached_tokens(self, block: int) -> tuple[int, ...] | None:
        key = self._key_of[block]
        return None if key is None else key[1]

    def cached_blocks(self) -> dict[int, int]:
        """A copy of the prefix map, hash -> block (for checks and tests)."""
        return dict(self._cached)

    def is_free(self, block: int) -> bool:
        return block in self._free or block in self._sticky or block in self._held_free


class HostPool:
    """Host (swap) blocks: each one belongs to at most one swapped-out sequence."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self._in_use = [False] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        block = self._free.pop()
        self._in_use[block] = True
        return block

    def free(self, block: int) -> None:
        if not self._in_use[block]:
            raise RuntimeError(f"HostPool.free: host block {block} is already free")
        self._in_use[block] = False
        self._free.append(block)
