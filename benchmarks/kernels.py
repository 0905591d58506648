"""Kernel benchmark: corral's paged_attention against its peers, measured in one run.

Decode: 64 sequences x 1024 cached tokens, one query token each, 32 query heads /
8 kv heads, head size 128. Peers: (a) the reference path, gathering each
sequence's K/V out of the paged cache and calling torch's
scaled_dot_product_attention, and (b) a plain torch copy of as many bytes as the
cache holds for those sequences (the memory-bandwidth ceiling).

Prefill: 4 sequences x 512 new tokens on top of 512 cached, same heads. Peer:
torch's scaled_dot_product_attention on contiguous tensors (gather excluded).

Linear (``--only linear``): the GEMMs of the issue-7 Llama (hidden 512, 8 heads /
4 kv heads of 64, intermediate 1408, vocab 32000) at decode (M = 1..256) and prefill
(M = 512, 2048) rows, float32: ``F.linear`` against weights prepacked once for MKL
(``torch.ops.mkl._mkl_reorder_linear_weight`` / ``_mkl_linear``, what inductor's
freezing uses for float32) and for oneDNN (``torch.ops.mkldnn._reorder_linear_weight``
/ ``_linear_pointwise``).

Fused (``--only fused``): corral's fused element-wise ops against the op-by-op
torch code they replace, at the same Llama's shapes.

Threads (``--only threads``): a decode-sized step of that Llama's GEMMs and fused
ops in child processes, for OMP_NUM_THREADS 1 and 2 and OMP_WAIT_POLICY passive
and active, alone and next to a busy neighbour process (one spinning core).

Prints one JSON object; times are medians in milliseconds. Usage::

    python benchmarks/kernels.py [--quick] [--device cuda] [--dtype bfloat16]
        [--only attention,linear,fused,threads]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
    seq_len: int,
    num_seqs: int,
    dtype: torch.dtype,
    device: torch.device,
    cache_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Caches holding ``num_seqs`` sequences of ``seq_len`` tokens in shuffled blocks,
    and the block tables (int32) that find them. ``cache_dtype`` (a float8 dtype)
    stores the caches in another dtype than ``dtype``."""
    blocks_per_seq = seq_len // BLOCK_SIZE
    num_blocks = num_seqs * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
    key_cache = torch.randn(shape, dtype=dtype, device=device).to(cache_dtype or dtype)
    value_cache = torch.randn(shape, dtype=dtype, device=device).to(cache_dtype or dtype)
    order = torch.randperm(num_blocks, device=device)
    block_tables = order.view(num_seqs, blocks_per_seq).to(torch.int32)
    return key_cache, value_cache, block_tables


def gather(
    cache: torch.Tensor, block_tables: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """[num_seqs, num_kv_heads, seq_len, head_size] out of the paged cache (in ``dtype``)."""
    num_seqs, blocks = block_tables.shape
    rows = cache[block_tables.long().flatten()].to(dtype or cache.dtype)
    return rows.view(num_seqs, blocks * BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE).transpose(1, 2)


def bench_decode(
    num_seqs: int,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    cache_dtype: torch.dtype | None = None,
) -> dict:
    key_cache, value_cache, block_tables = paged_cache(
        seq_len, num_seqs, dtype, device, cache_dtype
    )
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
        k, v = gather(key_cache, block_tables, dtype), gather(value_cache, block_tables, dtype)
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
        "shape": {
            "num_seqs": num_seqs,
            "seq_len": seq_len,
            "dtype": str(dtype),
            "cache_dtype": str(key_cache.dtype),
        },
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
    cache_dtype: torch.dtype | None = None,
) -> dict:
    seq_len = cached + new_tokens
    key_cache, value_cache, block_tables = paged_cache(
        seq_len, num_seqs, dtype, device, cache_dtype
    )
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
    k = gather(key_cache, block_tables, dtype).repeat_interleave(group, dim=1).contiguous()
    v = gather(value_cache, block_tables, dtype).repeat_interleave(group, dim=1).contiguous()
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
            "cache_dtype": str(key_cache.dtype),
        },
        "corral_ms": t_op,
        "sdpa_ms": t_sdpa,
        "corral_GFLOPs": flops / t_op / 1e6,
        "time_ratio_vs_sdpa": t_op / t_sdpa,
        "max_abs_error_vs_sdpa": (out.float() - expected.float()).abs().max().item(),
    }


# The issue-7 Llama (benchmarks/throughput.py STANDARD_MODEL): (out, in) of each GEMM.
LLAMA_LINEARS = {
    "qkv_proj": (1024, 512),
    "o_proj": (512, 512),
    "gate_up_proj": (2816, 512),
    "down_proj": (512, 1408),
    "lm_head": (32000, 512),
}
DECODE_ROWS = [1, 4, 16, 64, 128, 256]
PREFILL_ROWS = [512, 2048]


def bench_linear(rows: list[int], repeats: int, dtype: torch.dtype = torch.float32) -> dict:
    """GEMM time per Llama weight and row count: plain vs prepacked.

    MKL's packed sgemm is float32 only; for bfloat16 the peer is oneDNN's packed
    weight alone (its AMX path where the CPU has AMX).
    """
    result: dict = {}
    for name, (out_features, in_features) in LLAMA_LINEARS.items():
        weight = (torch.randn(out_features, in_features) / in_features**0.5).to(dtype)
        for m in rows:
            x = torch.randn(m, in_features).to(dtype)
            dnn_packed = torch.ops.mkldnn._reorder_linear_weight(weight, m)
            fns: dict[str, Callable[[], object]] = {
                "F.linear": lambda x=x, w=weight: F.linear(x, w),
                "mkldnn_packed": lambda x=x, p=dnn_packed: torch.ops.mkldnn._linear_pointwise(
                    x, p, None, "none", [], ""
                ),
            }
            if dtype == torch.float32:
                mkl_packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, m)
                fns["mkl_packed"] = lambda x=x, p=mkl_packed, w=weight: torch.ops.mkl._mkl_linear(
                    x, p, w, None, x.shape[0]
                )
            times = median_ms(fns, torch.device("cpu"), repeats)
            flops = 2 * m * out_features * in_features
            result[f"{name} M={m}"] = {
                **{k: round(v, 4) for k, v in times.items()},
                "F.linear GFLOP/s": round(flops / times["F.linear"] / 1e6, 1),
                "mkldnn_packed GFLOP/s": round(flops / times["mkldnn_packed"] / 1e6, 1),
                **{
                    f"{peer} / F.linear": round(times[peer] / times["F.linear"], 3)
                    for peer in ("mkl_packed", "mkldnn_packed")
                    if peer in times
                },
            }
    return result


def _torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _torch_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def bench_fused(rows: list[int], dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    """Each fused op against the op-by-op torch code of the same Llama layer."""
    hidden, inter, heads, kv_heads, head = 512, 1408, 8, 4, 64
    result: dict = {}
    table_len = 4096
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head, 2).float() / head))
    freqs = torch.outer(torch.arange(table_len).float(), inv_freq)
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), -1).to(device)
    emb = torch.cat((freqs, freqs), -1)
    cos_full, sin_full = emb.cos().to(device), emb.sin().to(device)
    for m in rows:
        x = torch.randn(m, hidden, dtype=dtype, device=device)
        residual = torch.randn(m, hidden, dtype=dtype, device=device)
        weight = torch.randn(hidden, dtype=dtype, device=device)
        gate_up = torch.randn(m, 2 * inter, dtype=dtype, device=device)
        qkv = torch.randn(m, (heads + 2 * kv_heads) * head, dtype=dtype, device=device)
        q = qkv[:, : heads * head].view(m, heads, head)
        k = qkv[:, heads * head : (heads + kv_heads) * head].view(m, kv_heads, head)
        positions = torch.randint(0, table_len, (m,), device=device)
        out = torch.empty_like(x)
        act_out = torch.empty(m, inter, dtype=dtype, device=device)

        def torch_rotary(
            positions: torch.Tensor = positions, q: torch.Tensor = q, k: torch.Tensor = k
        ) -> object:
            cos = cos_full[positions].unsqueeze(1).to(dtype)
            sin = sin_full[positions].unsqueeze(1).to(dtype)
            return _torch_rotary(q, k, cos, sin)

        cases: dict[str, dict[str, Callable[[], object]]] = {
            "rms_norm": {
                "corral": lambda x=x, w=weight, o=out: ops.rms_norm(o, x, w, 1e-6),
                "torch": lambda x=x, w=weight: _torch_rms_norm(x, w, 1e-6),
            },
            "fused_add_rms_norm": {
                # The op writes over its inputs; timing it on the same tensors again
                # and again keeps the cost identical (values stay finite: normalized).
                "corral": lambda x=x, r=residual, w=weight: ops.fused_add_rms_norm(x, r, w, 1e-6),
                "torch": lambda x=x, r=residual, w=weight: _torch_rms_norm(x + r, w, 1e-6),
            },
            "silu_and_mul": {
                "corral": lambda g=gate_up, o=act_out: ops.silu_and_mul(o, g),
                "torch": lambda g=gate_up: F.silu(g[:, :inter]) * g[:, inter:],
            },
            "rotary_embedding": {
                "corral": lambda p=positions, q=q, k=k: ops.rotary_embedding(
                    p, q, k, head, cos_sin, True
                ),
                "torch": torch_rotary,
            },
        }
        for name, fns in cases.items():
            times = median_ms(fns, device, repeats)
            result[f"{name} M={m}"] = {
                **{k: round(v, 4) for k, v in times.items()},
                "torch / corral": round(times["torch"] / times["corral"], 2),
            }
    return result


def threads_probe(repeats: int) -> dict:
    """One decode-sized step (M = 64) of the Llama's GEMMs and fused ops, in this process."""
    m = 64
    weights = {name: torch.randn(shape) for name, shape in LLAMA_LINEARS.items()}
    x = torch.randn(m, 512)
    h = torch.randn(m, 1408)
    gate_up = torch.randn(m, 2816)
    norm_w = torch.ones(512)
    out = torch.empty(m, 512)
    act = torch.empty(m, 1408)

    def layer() -> None:
        ops.rms_norm(out, x, norm_w, 1e-6)
        F.linear(out, weights["qkv_proj"])
        F.linear(out, weights["o_proj"])
        F.linear(out, weights["gate_up_proj"])
        ops.silu_and_mul(act, gate_up)
        F.linear(h, weights["down_proj"])

    def step() -> None:
        for _ in range(8):
            layer()
        F.linear(out, weights["lm_head"])

    return {"step": median_ms({"step": step}, torch.device("cpu"), repeats)["step"]}


def bench_threads(repeats: int) -> dict:
    """Step time per (threads, wait policy), alone and next to a spinning neighbour."""
    result: dict = {}
    for neighbour in (False, True):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
        try:
            for threads in (1, 2):
                for policy in ("PASSIVE", "ACTIVE"):
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": policy}
                    probe = subprocess.run(
                        [sys.executable, __file__, "--threads-probe", "--repeats", str(repeats)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    step = json.loads(probe.stdout)["step"]
                    key = (
                        f"{'busy neighbour' if neighbour else 'alone'}, {threads} threads, {policy}"
                    )
                    result[key] = round(step, 2)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    return result


SECTIONS = ("attention", "linear", "fused", "threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    parser.add_argument("--repeats", type=int, help="override the repeat count")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--only", default="attention", help=f"comma-separated sections of {SECTIONS}"
    )
    parser.add_argument(
        "--kv-cache-dtype",
        default=None,
        choices=["float8_e4m3fn", "float8_e5m2"],
        help="attention: caches in this float8 dtype (default: --dtype)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--threads-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (3 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ops.load_library()
    if args.threads_probe:
        print(json.dumps(threads_probe(repeats)))
        return
    sections = args.only.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)} (known: {SECTIONS})")
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "load_average": os.getloadavg(),
    }
    if "attention" in sections:
        cache_dtype = getattr(torch, args.kv_cache_dtype) if args.kv_cache_dtype else None
        result["decode"] = bench_decode(64, 1024, dtype, device, repeats, cache_dtype)
        result["prefill"] = bench_prefill(4, 512, 512, dtype, device, repeats, cache_dtype)
    if "linear" in sections:
        result["linear"] = bench_linear(DECODE_ROWS + PREFILL_ROWS, repeats, dtype)
    if "fused" in sections:
        result["fused"] = bench_fused([1, 64, 256, 2048], dtype, device, repeats)
    if "threads" in sections:
        result["thread_sweep"] = bench_threads(repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
