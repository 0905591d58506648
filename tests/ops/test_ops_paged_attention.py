"""paged_attention against the plain-torch reference, on hypothesis-drawn batches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import example, given, settings

from corral import ops
from tests.ops.paged_cases import (
    DEVICES,
    DTYPES,
    BatchSpec,
    batch_specs,
    check_against_reference,
    make_batch,
)


@pytest.fixture
def many_threads() -> Iterator[None]:
    """Four threads, so that a single long sequence is split into partitions
    (split-K) even on a machine with fewer cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60)
@example(
    BatchSpec(
        seq_lens=(1,),
        q_lens=(1,),
        num_kv_heads=1,
        group=1,
        head_size=64,
        block_size=8,
        dtype=torch.float32,
        sliding_window=-1,
        seed=0,
    )
)
@given(spec=batch_specs())
def test_matches_reference_on_mixed_batches(device: str, spec: BatchSpec) -> None:
    check_against_reference(spec, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seq_len", [1, 3, 4, 5, 7, 8, 259, 262])
@pytest.mark.parametrize(("num_kv_heads", "group"), [(3, 1), (2, 2), (2, 3), (1, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_over_key_blocks_and_their_tail_matches_reference(
    device: str, seq_len: int, num_kv_heads: int, group: int, dtype: torch.dtype
) -> None:
    """Decode walks keys four at a time with a tail of one to three, over every kv
    head of a slot and every row pair of a group (a lone last row included)."""
    spec = BatchSpec(
        seq_lens=(seq_len, seq_len + 1),
        q_lens=(1, 1),
        num_kv_heads=num_kv_heads,
        group=group,
        head_size=64,
        block_size=16,
        dtype=dtype,
        sliding_window=-1,
        seed=seq_len,
    )
    check_against_reference(spec, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("seq_len", "q_len", "window"),
    [(2500, 1, -1), (2049, 1, 700), (2100, 2100, -1), (2304, 96, 1000)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_contexts_split_into_partitions_match_reference(
    many_threads: None, device: str, seq_len: int, q_len: int, window: int, dtype: torch.dtype
) -> None:
    spec = BatchSpec(
        seq_lens=(seq_len,),
        q_lens=(q_len,),
        num_kv_heads=1,
        group=4,
        head_size=128,
        block_size=16,
        dtype=dtype,
        sliding_window=window,
        seed=seq_len,
    )
    check_against_reference(spec, device)


@pytest.mark.parametrize("device", DEVICES)
def test_a_token_with_window_one_returns_its_own_value(device: str) -> None:
    spec = BatchSpec(
        seq_lens=(40, 9),
        q_lens=(1, 9),
        num_kv_heads=2,
        group=2,
        head_size=64,
        block_size=8,
        dtype=torch.float32,
        sliding_window=1,
        seed=3,
    )
    batch = make_batch(spec, device)
    out = torch.empty_like(batch.query)
    ops.paged_attention(*batch.args(out))
    for token, (seq, pos) in enumerate([(0, 39), *[(1, p) for p in range(9)]]):
        block = batch.block_tables[seq, pos // 8]
        own = batch.value_cache[block, pos % 8].repeat_interleave(2, dim=0)
        torch.testing.assert_close(out[token], own)


@pytest.mark.parametrize("device", DEVICES)
def test_sequences_without_query_tokens_are_skipped(device: str) -> None:
    spec = BatchSpec(
        seq_lens=(20, 7, 33),
        q_lens=(1, 0, 3),
        num_kv_heads=1,
        group=2,
        head_size=64,
        block_size=16,
        dtype=torch.float32,
        sliding_window=-1,
        seed=5,
    )
    check_against_reference(spec, device)


@pytest.mark.parametrize("device", DEVICES)
def test_unpartitioned_results_do_not_depend_on_the_rest_of_the_batch(device: str) -> None:
    """Bitwise, as long as no decode context is split into partitions (under 512
    keys here): a split changes the summation order, and how a context is split
    depends on how many other tasks the batch has."""
    spec = BatchSpec(
        seq_lens=(300, 45, 700),
        q_lens=(1, 45, 200),
        num_kv_heads=2,
        group=4,
        head_size=128,
        block_size=16,
        dtype=torch.float32,
        sliding_window=-1,
        seed=11,
    )
    batch = make_batch(spec, device)
    together = torch.empty_like(batch.query)
    ops.paged_attention(*batch.args(together))
    starts = batch.query_start_loc.tolist()
    for s in range(3):
        alone = torch.empty_like(batch.query[starts[s] : starts[s + 1]])
        ops.paged_attention(
            alone,
            batch.query[starts[s] : starts[s + 1]],
            batch.key_cache,
            batch.value_cache,
            torch.tensor([0, alone.shape[0]], dtype=torch.int32, device=device),
            batch.seq_lens[s : s + 1],
            batch.block_tables[s : s + 1],
            batch.scale,
        )
        assert torch.equal(alone, together[starts[s] : starts[s + 1]])


@pytest.mark.parametrize("device", DEVICES)
def test_decode_split_over_kv_heads_and_partitions_matches_reference(
    many_threads: None, device: str
) -> None:
    spec = BatchSpec(
        seq_lens=(700, 650),
        q_lens=(1, 1),
        num_kv_heads=3,
        group=2,
        head_size=96,
        block_size=32,
        dtype=torch.float16,
        sliding_window=-1,
        seed=13,
    )
    check_against_reference(spec, device)
