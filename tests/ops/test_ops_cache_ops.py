"""reshape_and_cache, copy_blocks and swap_blocks: exact agreement with the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import ops
from corral.ops import reference
from tests.ops.paged_cases import BLOCK_SIZES, DEVICES, DTYPES, HEAD_SIZES

small_caches = st.fixed_dictionaries(
    {
        "num_blocks": st.integers(1, 24),
        "block_size": st.sampled_from(BLOCK_SIZES),
        "num_kv_heads": st.integers(1, 4),
        "head_size": st.sampled_from(HEAD_SIZES),
        "dtype": st.sampled_from(DTYPES),
    }
)


def random_cache(shape: dict, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    dims = (shape["num_blocks"], shape["block_size"], shape["num_kv_heads"], shape["head_size"])
    return torch.randn(dims, generator=gen).to(shape["dtype"]).to(device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(shape=small_caches, data=st.data())
def test_reshape_and_cache_writes_each_token_to_its_slot_and_skips_negative_slots(
    device: str, shape: dict, data: st.DataObject
) -> None:
    num_slots = shape["num_blocks"] * shape["block_size"]
    slots = data.draw(st.lists(st.integers(0, num_slots - 1), unique=True, max_size=40))
    skipped = data.draw(st.lists(st.integers(-3, -1), max_size=5))
    slot_list = data.draw(st.permutations(slots + skipped))
    num_tokens = len(slot_list)
    heads, size = shape["num_kv_heads"], shape["head_size"]
    # Keys and values as views into one fused qkv projection: rows are strided.
    qkv = torch.randn(num_tokens, 3, heads, size).to(shape["dtype"]).to(device)
    key, value = qkv[:, 1], qkv[:, 2]
    slot_mapping = torch.tensor(slot_list, dtype=torch.int64, device=device)
    key_cache = random_cache(shape, device, 1)
    value_cache = random_cache(shape, device, 2)
    expected_k, expected_v = key_cache.clone(), value_cache.clone()

    ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    reference.reshape_and_cache(key, value, expected_k, expected_v, slot_mapping)

    assert torch.equal(key_cache, expected_k)
    assert torch.equal(value_cache, expected_v)


@st.composite
def block_mappings(draw: st.DrawFn, num_src: int, num_dst: int, disjoint: bool) -> torch.Tensor:
    """(src, dst) pairs with distinct destinations; with ``disjoint`` no block is
    both a source and a destination (one cache on both sides)."""
    dsts = draw(st.lists(st.integers(0, num_dst - 1), unique=True, max_size=num_dst))
    if disjoint:
        free = sorted(set(range(num_src)) - set(dsts))
        if not free:
            return torch.empty((0, 2), dtype=torch.int64)
        srcs = [draw(st.sampled_from(free)) for _ in dsts]
    else:
        srcs = [draw(st.integers(0, num_src - 1)) for _ in dsts]
    return torch.tensor(list(zip(srcs, dsts, strict=True)), dtype=torch.int64).reshape(-1, 2)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40)
@given(shape=small_caches, num_layers=st.integers(1, 3), data=st.data())
def test_copy_blocks_copies_whole_blocks_in_every_layer(
    device: str, shape: dict, num_layers: int, data: st.DataObject
) -> None:
    mapping = data.draw(block_mappings(shape["num_blocks"], shape["num_blocks"], disjoint=True))
    keys = [random_cache(shape, device, 10 + i) for i in range(num_layers)]
    values = [random_cache(shape, device, 20 + i) for i in range(num_layers)]
    expected_keys = [k.clone() for k in keys]
    expected_values = [v.clone() for v in values]

    ops.copy_blocks(keys, values, mapping.to(device))
    reference.copy_blocks(expected_keys, expected_values, mapping)

    for got, want in zip(keys + values, expected_keys + expected_values, strict=True):
        assert torch.equal(got, want)


# (src device, dst device): host to host, and with a GPU also each way and on device.
SWAP_PAIRS = [("cpu", "cpu"), *[(a, b) for a in DEVICES for b in DEVICES if "cuda" in (a, b)]]


@pytest.mark.parametrize(("src_device", "dst_device"), SWAP_PAIRS)
@settings(max_examples=30)
@given(shape=small_caches, num_dst_blocks=st.integers(1, 24), data=st.data())
def test_swap_blocks_moves_whole_blocks_between_caches(
    src_device: str, dst_device: str, shape: dict, num_dst_blocks: int, data: st.DataObject
) -> None:
    src = random_cache(shape, src_device, 1)
    dst = random_cache({**shape, "num_blocks": num_dst_blocks}, dst_device, 2)
    mapping = data.draw(block_mappings(shape["num_blocks"], num_dst_blocks, disjoint=False))
    expected = dst.clone()

    ops.swap_blocks(src, dst, mapping)
    reference.swap_blocks(src, expected, mapping)

    assert torch.equal(dst, expected)
