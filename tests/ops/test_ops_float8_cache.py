"""Float8 KV caches (kv_cache_dtype "fp8" / "fp8_e5m2") in the CPU cache and attention ops."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import ops
from corral.ops import reference
from tests.ops.paged_cases import BatchSpec, batch_specs, check_against_reference

FLOAT8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def finite_patterns(dtype: torch.dtype) -> torch.Tensor:
    """Every byte of ``dtype`` that encodes a finite number, as a 1-D ``dtype`` tensor."""
    values = torch.arange(256, dtype=torch.uint8).view(dtype)
    return values[values.float().isfinite()]


@settings(max_examples=40)
@given(spec=batch_specs(), cache_dtype=st.sampled_from(FLOAT8))
def test_attention_over_float8_caches_matches_reference(
    spec: BatchSpec, cache_dtype: torch.dtype
) -> None:
    # The reference reads the caches with torch's float8 -> float32 conversion; the
    # kernels' own widening must give the same values, so only float32 math differs.
    check_against_reference(attrs.evolve(spec, cache_dtype=cache_dtype))


@pytest.mark.parametrize("cache_dtype", FLOAT8)
@pytest.mark.parametrize("q_len", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# The decode kernels widen float8 in chunks of 64 by table lookup where the CPU
# has AVX-512 VBMI, and the rest of a head 16 at a time: 16 (no chunk), 64 (one
# chunk) and 80 (a chunk and a remainder) take every path.
@pytest.mark.parametrize("head_size", [16, 64, 80])
def test_every_float8_value_is_read_exactly(
    cache_dtype: torch.dtype, q_len: int, dtype: torch.dtype, head_size: int
) -> None:
    # One key per sequence: the softmax weight is exactly 1 and the output is the
    # value row itself, so every finite byte pattern must come back as torch reads it
    # (every float8 value is a bfloat16 too). q_len 2 (sequences of one prefill chunk
    # each) takes the prefill path: for bfloat16 queries on AMX, the packed tiles.
    values = finite_patterns(cache_dtype)
    rows = -(-values.numel() // head_size)
    padded = torch.zeros(rows * head_size, dtype=torch.float32)
    padded[: values.numel()] = values.float()
    value_cache = padded.to(cache_dtype).view(rows, 1, 1, head_size)
    key_cache = torch.zeros_like(value_cache)
    seqs = rows if q_len == 1 else rows // 2
    query = torch.randn(seqs * q_len, 1, head_size).to(dtype)
    block_tables = torch.arange(seqs * q_len, dtype=torch.int32).view(seqs, q_len)
    out = torch.empty_like(query)
    ops.paged_attention(
        out,
        query,
        key_cache,
        value_cache,
        torch.arange(0, seqs * q_len + 1, q_len, dtype=torch.int32),
        torch.full((seqs,), q_len, dtype=torch.int32),
        block_tables,
        1.0,
        1,  # a window of one: each token sees only its own value
    )
    expected = value_cache.to(dtype)[: seqs * q_len].view(seqs * q_len, 1, head_size)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cache_dtype", FLOAT8)
def test_writes_of_any_float32_match_the_reference_bit_for_bit(cache_dtype: torch.dtype) -> None:
    # The vectorized write rounds in integer lanes: check it on random bit patterns
    # of every exponent (subnormals, overflow, infinities and NaN included), on the
    # float8 values themselves and on the halfway points between neighbours.
    gen = torch.Generator().manual_seed(1)
    raw = torch.randint(-(2**31), 2**31, (1 << 16,), generator=gen, dtype=torch.int64)
    random_bits = raw.to(torch.int32).view(torch.float32)
    grid = finite_patterns(cache_dtype).float().unique()
    halfway = (grid[1:] + grid[:-1]) / 2
    nudged = torch.cat([halfway, torch.nextafter(halfway, grid[1:]), -halfway])
    values = torch.cat([random_bits, grid, nudged, torch.tensor([float("inf"), -float("inf")])])
    values = values[: values.numel() // 64 * 64].view(-1, 1, 64)
    slots = torch.arange(values.size(0))
    ours = [torch.zeros(values.size(0), 1, 1, 64, dtype=cache_dtype) for _ in range(2)]
    ref = [torch.zeros_like(ours[0]) for _ in range(2)]
    ops.reshape_and_cache(values, values, ours[0], ours[1], slots)
    reference.reshape_and_cache(values, values, ref[0], ref[1], slots)
    assert torch.equal(ours[0].view(torch.uint8), ref[0].view(torch.uint8))
    assert torch.equal(ours[1].view(torch.uint8), ref[1].view(torch.uint8))


@pytest.mark.parametrize("cache_dtype", FLOAT8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_writes_round_and_saturate_like_the_reference(
    cache_dtype: torch.dtype, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(0)
    key = (torch.randn(5, 2, 32, generator=gen) * 30).to(dtype)
    value = torch.randn(5, 2, 32, generator=gen).to(dtype)
    # Past both float8 ranges, yet finite in float16.
    key[0, 0, :4] = torch.tensor([6e4, -6e4, 448.0, 0.0]).to(dtype)
    slots = torch.tensor([0, 7, -1, 3, 12])
    caches = [torch.zeros(4, 4, 2, 32, dtype=cache_dtype) for _ in range(4)]
    ops.reshape_and_cache(key, value, caches[0], caches[1], slots)
    reference.reshape_and_cache(key, value, caches[2], caches[3], slots)
    for ours, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(ours.view(torch.uint8), ref.view(torch.uint8))
    top = reference.FLOAT8_MAX[cache_dtype]
    assert caches[0][0, 0, 0, :2].float().tolist() == [top, -top]
    assert caches[0].float().isfinite().all()


def test_caches_of_another_dtype_are_refused() -> None:
    key = torch.randn(1, 1, 16)
    cache = torch.zeros(1, 4, 1, 16, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="float8"):
        ops.reshape_and_cache(key, key, cache, cache.clone(), torch.tensor([0]))
    out = torch.empty(1, 1, 16)
    with pytest.raises(RuntimeError, match="float8"):
        ops.paged_attention(
            out,
            key,
            cache,
            cache,
            torch.tensor([0, 1], dtype=torch.int32),
            torch.tensor([1], dtype=torch.int32),
            torch.zeros(1, 1, dtype=torch.int32),
            1.0,
        )
