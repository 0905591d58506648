"""Plain-torch versions of the native ops, written for clarity, used by tests only.

Each function has the signature and in-place semantics of its namesake in
:mod:`corral.ops`. Nothing in corral calls these as a fallback: they are slow by
design (a Python loop per sequence) and exist to hold the native kernels to.
"""

from __future__ import annotations

import torch

__all__ = [
    "copy_blocks",
    "gather_kv",
    "paged_attention",
    "reshape_and_cache",
    "swap_blocks",
]


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Reference of :func:`corral.ops.reshape_and_cache`."""
    block_size = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = key[keep]
    value_cache[blocks, offsets] = value[keep]


def gather_kv(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's keys and values, ``[seq_len, num_kv_heads, head_size]`` each."""
    block_size = key_cache.shape[1]
    positions = torch.arange(seq_len, device=key_cache.device)
    blocks = block_table.long()[positions // block_size]
    offsets = positions % block_size
    return key_cache[blocks, offsets], value_cache[blocks, offsets]


def paged_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int = -1,
) -> None:
    """Reference of :func:`corral.ops.paged_attention`, computed in float32."""
    num_heads = query.shape[1]
    group = num_heads // key_cache.shape[2]
    starts = query_start_loc.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        q = query[starts[s] : starts[s + 1]].float()
        q_len = q.shape[0]
        if q_len == 0:
            continue
        k, v = gather_kv(key_cache, value_cache, block_tables[s], seq_len)
        k = k.float().repeat_interleave(group, dim=1)
        v = v.float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        visible = k_pos <= q_pos
        if sliding_window > 0:
            visible &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[starts[s] : starts[s + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)


def copy_blocks(
    key_caches: list[torch.Tensor],
    value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor,
) -> None:
    """Reference of :func:`corral.ops.copy_blocks`."""
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    for cache in [*key_caches, *value_caches]:
        cache[dst.to(cache.device)] = cache[src.to(cache.device)]


def swap_blocks(src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """Reference of :func:`corral.ops.swap_blocks`."""
    for s, d in block_mapping.tolist():
        dst[d].copy_(src[s])
