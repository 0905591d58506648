"""Every op rejects bad input with a RuntimeError that names the problem, and a
bad block id or slot fails before anything is read or written."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from corral import ops
from tests.ops.paged_cases import DEVICES, BatchSpec, PagedBatch, make_batch

SPEC = BatchSpec(
    seq_lens=(20, 33),
    q_lens=(1, 5),
    num_kv_heads=2,
    group=2,
    head_size=64,
    block_size=8,
    dtype=torch.float32,
    sliding_window=-1,
    seed=7,
)


def attention_args(device: str) -> dict:
    batch = make_batch(SPEC, device)
    return {
        "out": torch.zeros_like(batch.query),
        "query": batch.query,
        "key_cache": batch.key_cache,
        "value_cache": batch.value_cache,
        "query_start_loc": batch.query_start_loc,
        "seq_lens": batch.seq_lens,
        "block_tables": batch.block_tables,
        "scale": batch.scale,
    }


def with_entry(tensor: torch.Tensor, index: tuple, value: int) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


ATTENTION_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("float64 query", lambda a: a.update(query=a["query"].double()), "dtype"),
    ("cache dtype differs", lambda a: a.update(key_cache=a["key_cache"].half()), "share one dtype"),
    ("int64 seq_lens", lambda a: a.update(seq_lens=a["seq_lens"].long()), "int32"),
    ("2-D query", lambda a: a.update(query=a["query"][:, 0]), "query must be"),
    ("out shape", lambda a: a.update(out=a["out"][:-1]), "out shape"),
    (
        "value_cache shape",
        lambda a: a.update(value_cache=a["value_cache"][:-1]),
        "value_cache shape",
    ),
    (
        "heads not a multiple of kv heads",
        lambda a: a.update(query=a["query"][:, :3].contiguous(), out=a["out"][:, :3].contiguous()),
        "not a multiple",
    ),
    (
        "head size not a multiple of 16",
        lambda a: a.update(
            query=a["query"][..., :40].contiguous(),
            out=a["out"][..., :40].contiguous(),
            key_cache=a["key_cache"][..., :40].contiguous(),
            value_cache=a["value_cache"][..., :40].contiguous(),
        ),
        "head_size must be",
    ),
    (
        "strided query",
        lambda a: a.update(query=a["query"].repeat(1, 1, 2)[..., :64]),
        "must be contiguous",
    ),
    ("missing seq", lambda a: a.update(seq_lens=a["seq_lens"][:1]), "query_start_loc"),
    (
        "query_start_loc end",
        lambda a: a.update(query_start_loc=with_entry(a["query_start_loc"], (2,), 5)),
        "num_tokens",
    ),
    (
        "seq_len below q_len",
        lambda a: a.update(seq_lens=with_entry(a["seq_lens"], (1,), 4)),
        "below the sequence's query length",
    ),
    (
        "seq_len beyond the block table",
        lambda a: a.update(seq_lens=with_entry(a["seq_lens"], (1,), 8 * 6 + 1)),
        "blocks of size",
    ),
    (
        "block id past the cache",
        lambda a: a.update(block_tables=with_entry(a["block_tables"], (1, 4), 10_000)),
        r"block_tables\[1\]\[4\] = 10000 is out of range",
    ),
    (
        "negative block id",
        lambda a: a.update(block_tables=with_entry(a["block_tables"], (0, 0), -1)),
        r"block_tables\[0\]\[0\] = -1 is out of range",
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("mutate", "message"),
    [pytest.param(m, msg, id=name) for name, m, msg in ATTENTION_CASES],
)
def test_paged_attention_rejects_bad_input(
    device: str, mutate: Callable[[dict], None], message: str
) -> None:
    args = attention_args(device)
    mutate(args)
    with pytest.raises(RuntimeError, match=f"paged_attention: .*({message})"):
        ops.paged_attention(**args)
    assert not args["out"].any()


def cache_args(device: str) -> dict:
    batch: PagedBatch = make_batch(SPEC, device)
    return {
        "key": batch.query[:3, :2].contiguous(),
        "value": batch.query[:3, 2:].contiguous(),
        "key_cache": batch.key_cache.clone(),
        "value_cache": batch.value_cache.clone(),
        "slot_mapping": torch.tensor([0, -1, 17], dtype=torch.int64, device=device),
    }


CACHE_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("int32 slots", lambda a: a.update(slot_mapping=a["slot_mapping"].int()), "int64"),
    ("slot past the cache", lambda a: a.update(slot_mapping=a["slot_mapping"] * 1000), "slot"),
    ("value shape", lambda a: a.update(value=a["value"][:2]), "value shape"),
    ("key dtype", lambda a: a.update(key=a["key"].bfloat16()), "caches('| must share one) dtype"),
    ("kv heads", lambda a: a.update(key=a["key"][:, :1], value=a["value"][:, :1]), "kv heads"),
    ("slot count", lambda a: a.update(slot_mapping=a["slot_mapping"][:2]), "num_tokens"),
    ("3-D cache", lambda a: a.update(key_cache=a["key_cache"][0]), "key_cache must be"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("mutate", "message"), [pytest.param(m, msg, id=name) for name, m, msg in CACHE_CASES]
)
def test_reshape_and_cache_rejects_bad_input_without_writing(
    device: str, mutate: Callable[[dict], None], message: str
) -> None:
    args = cache_args(device)
    mutate(args)
    before = args["key_cache"].clone()
    with pytest.raises(RuntimeError, match=f"reshape_and_cache: .*{message}"):
        ops.reshape_and_cache(**args)
    assert torch.equal(args["key_cache"], before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        pytest.param([[0, 99]], r"block_mapping\[0\]\[1\] = 99 is out of range", id="dst"),
        pytest.param([[-1, 2]], r"block_mapping\[0\]\[0\] = -1 is out of range", id="src"),
        pytest.param([[0, 2], [1, 2]], "writes block 2 twice", id="twice"),
        pytest.param([[0, 2], [2, 3]], "both a source and a destination", id="chain"),
    ],
)
def test_copy_blocks_rejects_bad_block_ids_without_writing(
    device: str, mapping: list[list[int]], message: str
) -> None:
    caches = [torch.randn(8, 4, 1, 16, device=device) for _ in range(2)]
    before = [c.clone() for c in caches]
    block_mapping = torch.tensor(mapping, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match=f"copy_blocks: .*{message}"):
        ops.copy_blocks(caches[:1], caches[1:], block_mapping)
    assert all(torch.equal(c, b) for c, b in zip(caches, before, strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("dst_shape", "dst_dtype", "mapping", "message"),
    [
        pytest.param((8, 4, 1, 16), torch.float32, [[0, 8]], "out of range", id="dst-id"),
        pytest.param((4, 4, 1, 16), torch.float32, [[6, 0]], "out of range", id="src-id"),
        pytest.param((8, 4, 2, 16), torch.float32, [[0, 0]], "block shape", id="shape"),
        pytest.param((8, 4, 1, 16), torch.float16, [[0, 0]], "dtype", id="dtype"),
    ],
)
def test_swap_blocks_rejects_bad_input_without_writing(
    device: str,
    dst_shape: tuple[int, ...],
    dst_dtype: torch.dtype,
    mapping: list[list[int]],
    message: str,
) -> None:
    src = torch.randn(6, 4, 1, 16, device=device)
    dst = torch.zeros(dst_shape, dtype=dst_dtype)
    with pytest.raises(RuntimeError, match=f"swap_blocks: .*{message}"):
        ops.swap_blocks(src, dst, torch.tensor(mapping, dtype=torch.int64))
    assert not dst.any()
