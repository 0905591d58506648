"""State machine over the KV cache manager with a shadow copy of the cache contents.

Sequences are admitted (with prefix-cache hits), decode, fork, swap out and in, and
are freed in any order. The shadow cache holds what the runner would hold: every
computed token is written to its slot, and copy/swap mappings move contents. After
every rule: blocks are conserved, reference counts equal block-table references, a
block is free exactly when its count is 0, block tables have ceil(tokens / block_size)
entries, every sequence reads its own tokens back through its table (so copy-on-write
never touched shared content), and the prefix map only names full blocks holding
the tokens it was registered for.
"""

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral.config import CoreConfig
from corral.core.kv_cache_manager import KVCacheManager
from corral.core.sequence import Request, Sequence
from corral.sampling_params import SamplingParams

_TOKENS = st.integers(1, 3)  # a tiny alphabet, so that prefixes repeat


class KVCacheMachine(RuleBasedStateMachine):
    @initialize(
        block_size=st.sampled_from([1, 2, 3, 4]),
        num_kv_blocks=st.integers(2, 16),
        num_host_blocks=st.integers(0, 8),
    )
    def setup(self, block_size: int, num_kv_blocks: int, num_host_blocks: int) -> None:
        self.bs = block_size
        self.kv = KVCacheManager(
            CoreConfig(
                block_size=block_size,
                num_kv_blocks=num_kv_blocks,
                num_host_blocks=num_host_blocks,
                max_model_len=64,
                max_num_seqs=1,
                max_num_batched_tokens=64,
            )
        )
        self.device: dict[int, list[int | None]] = {}
        self.host: dict[int, list[int | None]] = {}
        self.live: list[Sequence] = []
        self.swapped: list[Sequence] = []
        self.next_id = 0

    def _read(self, cache: dict[int, list[int | None]], seq: Sequence) -> list[int | None]:
        bs = self.bs
        return [
            cache.get(seq.block_table[p // bs], [None] * bs)[p % bs]
            for p in range(seq.num_computed_tokens)
        ]

    def _write(self, seq: Sequence, start: int) -> None:
        bs = self.bs
        for pos in range(start, len(seq.token_ids)):
            block = seq.block_table[pos // bs]
            assert self.kv.pool.ref_counts[block] == 1, "write into a shared block"
            self.device.setdefault(block, [None] * bs)[pos % bs] = seq.token_ids[pos]
        seq.num_computed_tokens = len(seq.token_ids)
        self.kv.cache_full_blocks(seq)

    def _move(self, src: dict, dst: dict, mapping: list[tuple[int, int]]) -> None:
        for s, d in mapping:
            dst[d] = list(src.get(s, [None] * self.bs))

    @rule(tokens=st.lists(_TOKENS, min_size=1, max_size=12), prompt_logprobs=st.booleans())
    def admit(self, tokens: list[int], prompt_logprobs: bool) -> None:
        params = SamplingParams(prompt_logprobs=1 if prompt_logprobs else None)
        request = Request(str(self.next_id), None, tokens, params, self.next_id, 0.0, None)
        seq = Sequence(self.next_id, 0, request)
        self.next_id += 1
        cached = self.kv.cached_prefix(seq)
        assert len(cached) * self.bs < len(tokens)
        if prompt_logprobs:
            assert cached == []
        for i, block in enumerate(cached):
            assert self.device[block] == tokens[i * self.bs : (i + 1) * self.bs]
        num_cached = len(cached) * self.bs
        if self.kv.admit(seq, cached, len(tokens) - num_cached, reserve=0):
            assert seq.num_computed_tokens == num_cached
            self._write(seq, num_cached)
            self.live.append(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), token=_TOKENS)
    def decode(self, data: st.DataObject, token: int) -> None:
        seq = data.draw(st.sampled_from(self.live))
        seq.token_ids.append(token)
        copies: list[tuple[int, int]] = []
        if self.kv.append_slots(seq, 1, copies):
            self._move(self.device, self.device, copies)
            self._write(seq, len(seq.token_ids) - 1)
        else:
            assert copies == []
            seq.token_ids.pop()
        self.kv.release_held()

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(self.live))
        child = parent.fork(self.next_id, 1)
        self.next_id += 1
        self.kv.fork(parent, child)
        self.live.append(child)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.live))
        self.live.remove(seq)
        self.kv.free(seq)
        assert seq.block_table == []

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.live))
        if not self.kv.can_swap_out(seq):
            return
        mapping: list[tuple[int, int]] = []
        self.kv.swap_out(seq, mapping)
        self._move(self.device, self.host, mapping)
        self.live.remove(seq)
        self.swapped.append(seq)

    @precondition(lambda self: self.swapped)
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.swapped))
        if self.kv.num_free_blocks < len(seq.block_table):
            return
        mapping: list[tuple[int, int]] = []
        self.kv.swap_in(seq, mapping)
        self._move(self.host, self.device, mapping)
        self.swapped.remove(seq)
        self.live.append(seq)
        self.kv.cache_full_blocks(seq)

    @precondition(lambda self: self.swapped)
    @rule(data=st.data())
    def drop_swapped(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.swapped))
        self.swapped.remove(seq)
        self.kv.free_host(seq)

    @invariant()
    def reference_counts_match_block_tables(self) -> None:
        if not hasattr(self, "kv"):
            return
        pool = self.kv.pool
        references = Counter(b for seq in self.live for b in seq.block_table)
        for block in range(pool.num_blocks):
            assert pool.ref_counts[block] == references[block]
            assert pool.is_free(block) == (references[block] == 0)
        assert pool.num_free + len(references) == pool.num_blocks

    @invariant()
    def host_blocks_are_owned_once(self) -> None:
        if not hasattr(self, "kv"):
            return
        owned = [b for seq in self.swapped for b in seq.block_table]
        assert len(owned) == len(set(owned))
        assert self.kv.host_pool.num_free + len(owned) == self.kv.host_pool.num_blocks

    @invariant()
    def every_sequence_reads_its_own_tokens(self) -> None:
        if not hasattr(self, "kv"):
            return
        for seq in self.live:
            assert len(seq.block_table) == -(-seq.num_computed_tokens // self.bs)
            assert self._read(self.device, seq) == seq.token_ids[: seq.num_computed_tokens]
        for seq in self.swapped:
            assert self._read(self.host, seq) == seq.token_ids[: seq.num_computed_tokens]

    @invariant()
    def prefix_map_points_at_full_matching_blocks(self) -> None:
        if not hasattr(self, "kv"):
            return
        pool = self.kv.pool
        for block_hash, block in pool.cached_blocks().items():
            tokens = pool.cached_tokens(block)
            assert tokens is not None and len(tokens) == self.bs
            assert pool.cached_hash(block) == block_hash
            assert self.device[block] == list(tokens)


KVCacheMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40)
test_kv_cache_state_machine = KVCacheMachine.TestCase
