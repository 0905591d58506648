"""Block pool and KV cache manager: reference counts, LRU eviction, prefix cache, CoW."""

import pytest

from corral.config import CoreConfig
from corral.core.block_pool import BlockPool, HostPool
from corral.core.kv_cache_manager import KVCacheManager
from corral.core.sequence import Request, Sequence
from corral.sampling_params import SamplingParams


def _config(**overrides: object) -> CoreConfig:
    values: dict = {
        "block_size": 4,
        "num_kv_blocks": 8,
        "num_host_blocks": 4,
        "max_model_len": 32,
        "max_num_seqs": 4,
        "max_num_batched_tokens": 32,
    }
    values.update(overrides)
    return CoreConfig(**values)


def _seq(tokens: list[int], seq_id: int = 0, **params: object) -> Sequence:
    request = Request(f"r{seq_id}", None, tokens, SamplingParams(**params), seq_id, 0.0, None)
    return Sequence(seq_id, 0, request)


def _compute(kv: KVCacheManager, seq: Sequence) -> None:
    """Admit ``seq`` and pretend its whole prompt got computed."""
    cached = kv.cached_prefix(seq)
    num_new = len(seq.token_ids) - len(cached) * kv.block_size
    assert kv.admit(seq, cached, num_new, reserve=0)
    seq.num_computed_tokens = len(seq.token_ids)
    kv.cache_full_blocks(seq)


def test_allocate_and_free_conserve_blocks() -> None:
    pool = BlockPool(4)
    blocks = [pool.allocate() for _ in range(4)]
    assert sorted(blocks) == [0, 1, 2, 3] and pool.num_free == 0
    with pytest.raises(RuntimeError, match="no free block"):
        pool.allocate()
    for block in blocks:
        pool.free(block)
    assert pool.num_free == 4
    with pytest.raises(RuntimeError, match="already free"):
        pool.free(blocks[0])


def test_uncached_free_blocks_are_reused_before_cached_ones() -> None:
    pool = BlockPool(3)
    a, b, _ = (pool.allocate() for _ in range(3))
    pool.cache(a, 111, None, (1, 2))
    pool.free(a)
    pool.free(b)
    assert pool.allocate() == b
    assert pool.lookup(111, None, (1, 2)) == a


def test_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    pool = BlockPool(3)
    blocks = [pool.allocate() for _ in range(3)]
    for i, block in enumerate(blocks):
        pool.cache(block, 100 + i, None, (i,))
    for block in (blocks[2], blocks[0], blocks[1]):
        pool.free(block)
    assert pool.allocate() == blocks[2]
    assert pool.lookup(102, None, (2,)) is None
    assert pool.lookup(100, None, (0,)) == blocks[0]


def test_sticky_blocks_are_evicted_last() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(), pool.allocate()
    pool.cache(a, 1, None, (1,))
    pool.cache(b, 2, None, (2,))
    pool.free(a, sticky=True)
    pool.free(b)
    assert pool.allocate() == b
    assert pool.allocate() == a


def test_lookup_needs_matching_tokens_not_just_the_hash() -> None:
    pool = BlockPool(2)
    block = pool.allocate()
    pool.cache(block, 42, None, (1, 2, 3, 4))
    assert pool.lookup(42, None, (1, 2, 3, 4)) == block
    assert pool.lookup(42, None, (1, 2, 3, 5)) is None
    assert pool.lookup(42, 7, (1, 2, 3, 4)) is None


def test_a_held_block_is_not_handed_out_before_release_even_when_freed() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(), pool.allocate()
    pool.hold(a)
    pool.free(a)
    pool.free(b)
    assert pool.ref_counts[a] == 0 and pool.is_free(a)
    assert pool.allocate() == b
    with pytest.raises(RuntimeError, match="no free block"):
        pool.allocate()
    pool.release_held()
    assert pool.allocate() == a


def test_host_pool_detects_double_free() -> None:
    host = HostPool(2)
    block = host.allocate()
    host.free(block)
    with pytest.raises(RuntimeError, match="already free"):
        host.free(block)


def test_prefix_hits_only_on_full_matching_blocks() -> None:
    kv = KVCacheManager(_config())
    first = _seq(list(range(1, 11)), 0)  # blocks [1-4] [5-8] and a partial [9, 10]
    _compute(kv, first)
    full_blocks = first.block_table[:2]
    kv.free(first)
    same_prefix = _seq([*range(1, 9), 99, 98], 1)
    assert kv.cached_prefix(same_prefix) == full_blocks
    differs_in_second = _seq([1, 2, 3, 4, 5, 6, 7, 0, 9, 10], 2)
    assert len(kv.cached_prefix(differs_in_second)) == 1
    # The partial third block is never cached, so a longer match stops at two.
    longer = _seq(list(range(1, 15)), 3)
    assert len(kv.cached_prefix(longer)) == 2


def test_the_last_prompt_token_is_always_computed() -> None:
    kv = KVCacheManager(_config())
    first = _seq(list(range(1, 9)), 0)
    _compute(kv, first)
    again = _seq(list(range(1, 9)), 1)
    assert len(kv.cached_prefix(again)) == 1


def test_prompt_logprobs_requests_get_no_prefix_hits() -> None:
    kv = KVCacheManager(_config())
    _compute(kv, _seq(list(range(1, 10)), 0))
    assert kv.cached_prefix(_seq(list(range(1, 10)), 1, prompt_logprobs=1)) == []


def test_copy_on_write_emits_a_copy_of_the_shared_last_block() -> None:
    kv = KVCacheManager(_config())
    parent = _seq([1, 2, 3, 4, 5, 6], 0)
    _compute(kv, parent)
    child = parent.fork(1, 1)
    kv.fork(parent, child)
    shared_last = parent.block_table[1]
    assert kv.pool.ref_counts[shared_last] == 2
    copies: list[tuple[int, int]] = []
    assert kv.append_slots(child, 1, copies)
    assert copies == [(shared_last, child.block_table[1])]
    assert child.block_table[0] == parent.block_table[0]
    assert child.block_table[1] != shared_last
    assert kv.pool.ref_counts[shared_last] == 1
    kv.release_held()
    copies.clear()
    assert kv.append_slots(parent, 1, copies)
    assert copies == [] and parent.block_table[1] == shared_last


def test_swap_out_and_in_emit_mappings_and_restore_capacity() -> None:
    kv = KVCacheManager(_config())
    seq = _seq([1, 2, 3, 4, 5], 0)
    _compute(kv, seq)
    device_blocks = list(seq.block_table)
    out: list[tuple[int, int]] = []
    assert kv.can_swap_out(seq)
    kv.swap_out(seq, out)
    assert [d for d, _ in out] == device_blocks
    assert kv.num_free_blocks == 8 and kv.host_pool.num_free == 2
    back: list[tuple[int, int]] = []
    kv.swap_in(seq, back)
    assert [h for h, _ in back] == [h for _, h in out]
    assert kv.host_pool.num_free == 4 and len(seq.block_table) == 2
