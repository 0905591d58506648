"""Plain-torch versions of the native ops, written for clarity, used by tests only.

Each function has the signature and in-place semantics of its namesake in
:mod:`corral.ops`. Nothing in corral calls these as a fallback: they are slow by
design (a Python loop per sequence) and exist to hold the native kernels to.
"""

from __future__ import annotations

import torch

__all__ = [
    "add_lora",
    "copy_blocks",
    "fused_add_rms_norm",
    "gather_kv",
    "gelu_tanh",
    "greedy_sample",
    "paged_attention",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "swap_blocks",
    "to_cache_dtype",
    "token_logprobs",
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
    key_cache[blocks, offsets] = to_cache_dtype(key[keep], key_cache.dtype)
    value_cache[blocks, offsets] = to_cache_dtype(value[keep], value_cache.dtype)


FLOAT8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def to_cache_dtype(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rows`` as a cache of ``dtype`` holds them: float8 caches round to nearest even
    and saturate to their finite range (torch's own conversion overflows to NaN or
    infinity)."""
    if dtype in FLOAT8_MAX:
        top = FLOAT8_MAX[dtype]
        return rows.float().clamp(-top, top).to(dtype)
    return rows.to(dtype)


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


def rms_norm(out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, epsilon: float) -> None:
    """Reference of :func:`corral.ops.rms_norm`, transformers' ``LlamaRMSNorm`` arithmetic."""
    x = input.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + epsilon)).to(input.dtype)
    out.copy_(weight * normed)


def fused_add_rms_norm(
    input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
) -> None:
    """Reference of :func:`corral.ops.fused_add_rms_norm`."""
    residual.copy_(input + residual)
    rms_norm(input, residual, weight, epsilon)


def silu_and_mul(out: torch.Tensor, input: torch.Tensor) -> None:
    """Reference of :func:`corral.ops.silu_and_mul`."""
    gate, up = input.chunk(2, dim=-1)
    out.copy_(torch.nn.functional.silu(gate) * up)


def gelu_tanh(out: torch.Tensor, input: torch.Tensor) -> None:
    """Reference of :func:`corral.ops.gelu_tanh`, computed in float32."""
    out.copy_(torch.nn.functional.gelu(input.float(), approximate="tanh"))


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> None:
    """Reference of :func:`corral.ops.rotary_embedding`, computed in float32."""
    rot_dim = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache[positions].float().unsqueeze(1).chunk(2, dim=-1)
    for x in (query, key):
        heads = x if x.dim() == 3 else x.view(x.shape[0], x.shape[1] // head_size, head_size)
        rot = heads[..., :rot_dim].float()
        if is_neox:
            x1, x2 = rot.chunk(2, dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
        y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        rotated = torch.cat((y1, y2), -1) if is_neox else torch.stack((y1, y2), -1).flatten(-2)
        heads[..., :rot_dim] = rotated.to(x.dtype)


def token_logprobs(out: torch.Tensor, logits: torch.Tensor, token_ids: torch.Tensor) -> None:
    """Reference of :func:`corral.ops.token_logprobs`."""
    out.copy_(logits.log_softmax(dim=-1).gather(1, token_ids.unsqueeze(1)).squeeze(1))


def greedy_sample(token_ids: torch.Tensor, logprobs: torch.Tensor, logits: torch.Tensor) -> None:
    """Reference of :func:`corral.ops.greedy_sample`."""
    values = logits.float()
    ids = torch.max(values, dim=-1).indices
    token_ids.copy_(ids)
    logprobs.copy_(values.log_softmax(dim=-1).gather(1, ids.unsqueeze(1)).squeeze(1))


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_slots: torch.Tensor,
    output_slices: list[int],
) -> None:
    """Reference of :func:`corral.ops.add_lora` (one token at a time)."""
    rank = lora_b.shape[1]
    for t in range(x.shape[0]):
        slot = int(token_slots[t])
        if slot < 0:
            continue
        shrunk = (lora_a[slot].float() @ x[t].float()).to(x.dtype).float()
        c0 = 0
        for j, size in enumerate(output_slices):
            b = lora_b[slot, :, c0 : c0 + size].float()
            delta = shrunk[j * rank : (j + 1) * rank] @ b
            out[t, c0 : c0 + size] = (out[t, c0 : c0 + size].float() + delta).to(out.dtype)
            c0 += size
