"""Kernel benchmark: corral's paged_attention against its peers, measured in one run.

Decode: 64 sequences x 1024 cached tokens, one query token each, 32 query heads /
8 kv heads, head size 128. Peers: (a) the reference path, gathering each
sequence's K/V out of the paged cache and calling torch's
scaled_dot_product_attention, and (b) a plain torch copy of as many bytes as the
cache holds for those sequences (the memory-bandwidth ceiling).

Prefill: 4 sequences x 512 new tokens on top of 512 cached, same heads. Peer:
torch's scaled_dot_product_attention on contiguous tensors (gather excluded).

Prints one JSON object; times are medians in milliseconds. Usage::

    python benchmarks/kernels.py [--quick] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from corral import ops

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 32, 8, 128, 16


def median_ms(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict:
    """Median wall time in ms of each function, after one warm-up call each.

    The functions take turns (round robin) so that all of them see the same
    machine: on a shared machine the load drifts during a run, and measuring one
    peer after the other would charge the drift to whichever ran later.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def paged_cache(
    seq_len: int, num_seqs: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Caches holding ``num_seqs`` sequences of ``seq_len`` tokens in shuffled blocks,
    and the block tables (int32) that find them."""
    blocks_per_seq = seq_len // BLOCK_SIZE
    num_blocks = num_seqs * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
    key_cache = torch.randn(shape, dtype=dtype, device=device)
    value_cache = torch.randn(shape, dtype=dtype, device=device)
    order = torch.randperm(num_blocks, device=device)
    block_tables = order.view(num_seqs, blocks_per_seq).to(torch.int32)
    return key_cache, value_cache, block_tables


def gather(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """[num_seqs, num_kv_heads, seq_len, head_size] out of the paged cache."""
    num_seqs, blocks = block_tables.shape
    rows = cache[block_tables.long().flatten()]
    return rows.view(num_seqs, blocks * BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE).transpose(1, 2)


def bench_decode(
    num_seqs: int, seq_len: int, dtype: torch.dtype, device: torch.device, repeats: int
) -> dict:
    key_cache, value_cache, block_tables = paged_cache(seq_len, num_seqs, dtype, device)
    query = torch.randn(num_seqs, NUM_HEADS, HEAD_SIZE, dtype=dtype, device=device)
    out = torch.empty_like(query)
    i32 = {"dtype": torch.int32, "device": device}
    query_start_loc = torch.arange(num_seqs + 1, **i32)
    seq_lens = torch.full((num_seqs,), seq_len, **i32)
    scale = HEAD_SIZE**-0.5

    def corral_op() -> None:
        ops.paged_attention(
            out, query, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale
        )

    def reference_path() -> torch.Tensor:
        k, v = gather(key_cache, block_tables), gather(value_cache, block_tables)
        q = query.unsqueeze(2)
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)

    kv_bytes = 2 * key_cache.numel() * key_cache.element_size()
    copy_src = torch.empty(kv_bytes, dtype=torch.uint8, device=device)
    copy_dst = torch.empty_like(copy_src)

    timed = median_ms(
        {"op": corral_op, "ref": reference_path, "copy": lambda: copy_dst.copy_(copy_src)},
        device,
        repeats,
    )
    t_op, t_ref, t_copy = timed["op"], timed["ref"], timed["copy"]
    expected = reference_path().squeeze(2)
    max_error = (out.float() - expected.float()).abs().max().item()
    bandwidth = kv_bytes / t_op / 1e6
    copy_bandwidth = kv_bytes / t_copy / 1e6
    return {
        "shape": {"num_seqs": num_seqs, "seq_len": seq_len, "dtype": str(dtype)},
        "kv_bytes": kv_bytes,
        "corral_ms": t_op,
        "reference_path_ms": t_ref,
        "copy_ms": t_copy,
        "kv_read_GBps": bandwidth,
        "copy_GBps": copy_bandwidth,
        "speedup_vs_reference_path": t_ref / t_op,
        "fraction_of_copy_bandwidth": bandwidth / copy_bandwidth,
        "max_abs_error_vs_reference": max_error,
    }


def bench_prefill(
    num_seqs: int,
    new_tokens: int,
    cached: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
) -> dict:
    seq_len = cached + new_tokens
    key_cache, value_cache, block_tables = paged_cache(seq_len, num_seqs, dtype, device)
    query = torch.randn(num_seqs * new_tokens, NUM_HEADS, HEAD_SIZE, dtype=dtype, device=device)
    out = torch.empty_like(query)
    i32 = {"dtype": torch.int32, "device": device}
    query_start_loc = torch.arange(0, num_seqs * new_tokens + 1, new_tokens, **i32)
    seq_lens = torch.full((num_seqs,), seq_len, **i32)
    scale = HEAD_SIZE**-0.5

    def corral_op() -> None:
        ops.paged_attention(
            out, query, key_cache, value_cache, query_start_loc, seq_lens, block_tables, scale
        )

    # The peer gets contiguous, head-major tensors with K/V already expanded to all
    # query heads, and a bottom-right causal mask (the new tokens follow the cache).
    q = query.view(num_seqs, new_tokens, NUM_HEADS, HEAD_SIZE).transpose(1, 2).contiguous()
    group = NUM_HEADS // NUM_KV_HEADS
    k = gather(key_cache, block_tables).repeat_interleave(group, dim=1).contiguous()
    v = gather(value_cache, block_tables).repeat_interleave(group, dim=1).contiguous()
    positions = torch.arange(seq_len, device=device)
    mask = positions[None, :] <= positions[cached:, None]

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    timed = median_ms({"op": corral_op, "sdpa": sdpa}, device, repeats)
    t_op, t_sdpa = timed["op"], timed["sdpa"]
    expected = sdpa().transpose(1, 2).reshape_as(out)
    flops = 4 * num_seqs * NUM_HEADS * HEAD_SIZE * sum(cached + i + 1 for i in range(new_tokens))
    return {
        "shape": {
            "num_seqs": num_seqs,
            "new_tokens": new_tokens,
            "cached_tokens": cached,
            "dtype": str(dtype),
        },
        "corral_ms": t_op,
        "sdpa_ms": t_sdpa,
        "corral_GFLOPs": flops / t_op / 1e6,
        "time_ratio_vs_sdpa": t_op / t_sdpa,
        "max_abs_error_vs_sdpa": (out.float() - expected.float()).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    repeats = 3 if args.quick else 10
    torch.manual_seed(0)
    ops.load_library()
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "decode": bench_decode(64, 1024, dtype, device, repeats),
        "prefill": bench_prefill(4, 512, 512, dtype, device, repeats),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
