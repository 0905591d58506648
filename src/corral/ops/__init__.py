"""Typed wrappers over corral's native ops (``torch.ops.corral.*``).

The ops are written in C++ (``native/cpu``) and CUDA (``native/cuda``) and
registered with ``TORCH_LIBRARY(corral, ...)``; torch's dispatcher picks the kernel
by the tensors' device.

Building: the extension is compiled just in time by :mod:`corral.ops.build`
(``torch.utils.cpp_extension.load``) into a persistent cache folder
(``$CORRAL_CACHE_DIR``, default ``~/.cache/corral``), the first time an op is called
or when ``python -m corral.ops.build`` runs (``scripts/bootstrap`` does). A compile
is announced with a WARNING log record before it starts; a cached build loads in
about a second. CPU sources are built with ``-O3 -fopenmp -march=native`` and the
``at::vec`` capability torch itself uses on this CPU (AVX512 or AVX2). Where torch
has CUDA and a GPU is present the CUDA sources are compiled in too. The native
sources live in the repository, so corral must be an editable install
(``pip install -e .``).

KV cache layout, per layer: ``key_cache`` and ``value_cache`` are each
``[num_blocks, block_size, num_kv_heads, head_size]``; slot ``s`` is offset
``s % block_size`` of block ``s // block_size``. Every op checks its inputs and
raises ``RuntimeError`` naming the bad argument; a bad block id or slot never reads
or writes out of bounds. :mod:`corral.ops.reference` holds plain-torch versions for
tests; it is never used as a fallback.
"""

from __future__ import annotations

import pathlib

import torch

__all__ = [
    "add_lora",
    "copy_blocks",
    "fused_add_rms_norm",
    "gelu_tanh",
    "greedy_sample",
    "load_library",
    "paged_attention",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "swap_blocks",
    "token_logprobs",
]

# Set once the library is loaded; the wrappers test it without taking the build
# lock, so a hot path pays one global read per call. A stale False only sends a
# caller to load_library, which is idempotent under its own lock.
_ready = False


def load_library() -> pathlib.Path:
    """Build the extension if needed (announced in the log) and load it, once.

    The wrappers below call this themselves; call it early to move a first-time
    compile out of a latency-sensitive path.

    Returns:
        The path of the loaded shared library.
    """
    global _ready
    # Imported here so that ``python -m corral.ops.build`` runs the module once.
    from corral.ops import build

    path = build.load_library()
    _ready = True
    return path


def _ensure_loaded() -> None:
    if not _ready:
        load_library()


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write this step's keys and values into their cache slots, in place.

    Args:
        key: ``[num_tokens, num_kv_heads, head_size]``, last dimension contiguous.
        value: same shape and dtype as ``key``.
        key_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``, the same dtype
            as ``key``, or a float8 dtype (``float8_e4m3fn``, ``float8_e5m2``; CPU only):
            each element is then rounded to nearest even and saturated to the float8
            type's finite range.
        value_cache: same shape and dtype as ``key_cache``.
        slot_mapping: int64 ``[num_tokens]``; token ``i`` goes to slot
            ``slot_mapping[i]``. A negative slot skips the token (padding).
    """
    _ensure_loaded()
    torch.ops.corral.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


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
    """Causal attention of a varlen batch over the paged KV cache, into ``out``.

    Sequence ``s`` owns query tokens ``query_start_loc[s] : query_start_loc[s + 1]``
    (``q_len`` of them: 1 for a decode step, more for a prefill chunk) and has
    ``seq_lens[s]`` tokens in the cache, this step's included (write them with
    :func:`reshape_and_cache` first). Its query token ``i`` sits at position
    ``seq_lens[s] - q_len + i`` and attends to the key positions ``j <= position``
    (and ``j > position - sliding_window`` when ``sliding_window > 0``), found
    through ``block_tables[s]``. Query head ``h`` reads kv head
    ``h // (num_heads // num_kv_heads)`` (GQA / MQA). Math runs in float32.

    Args:
        out: ``[num_tokens, num_heads, head_size]``, written in place.
        query: same shape and dtype as ``out``; float32, bfloat16 or float16.
        key_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``, the query's
            dtype or a float8 dtype (``float8_e4m3fn``, ``float8_e5m2``; CPU only),
            read exactly into float32.
        value_cache: same shape and dtype as ``key_cache``.
        query_start_loc: int32 ``[num_seqs + 1]``, starting at 0, non-decreasing.
        seq_lens: int32 ``[num_seqs]``, each at most ``max_blocks * block_size``.
        block_tables: int32 ``[num_seqs, max_blocks]``; entries past a sequence's
            last block are ignored.
        scale: multiplies ``query . key`` before the softmax (usually head_size**-0.5).
        sliding_window: attend to at most this many most recent positions; ``<= 0``
            means no window.
    """
    _ensure_loaded()
    torch.ops.corral.paged_attention(
        out,
        query,
        key_cache,
        value_cache,
        query_start_loc,
        seq_lens,
        block_tables,
        scale,
        sliding_window,
    )


def copy_blocks(
    key_caches: list[torch.Tensor],
    value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor,
) -> None:
    """Copy whole blocks inside every layer's caches (copy-on-write of a fork).

    Args:
        key_caches: one key cache per layer.
        value_caches: one value cache per layer.
        block_mapping: int64 ``[n, 2]`` of (source block, destination block). A block
            may not be written twice, nor be both a source and a destination.
    """
    _ensure_loaded()
    torch.ops.corral.copy_blocks(key_caches, value_caches, block_mapping)


def swap_blocks(src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """Copy whole blocks from one cache tensor to another (device <-> host, or on host).

    Args:
        src: a cache ``[num_src_blocks, block_size, num_kv_heads, head_size]``.
        dst: a cache with the same block shape and dtype, written in place.
        block_mapping: int64 CPU ``[n, 2]`` of (block in ``src``, block in ``dst``);
            no destination block twice.
    """
    _ensure_loaded()
    torch.ops.corral.swap_blocks(src, dst, block_mapping)


def rms_norm(out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, epsilon: float) -> None:
    """RMSNorm over the last dimension, into ``out``.

    ``out = T(T(x * rsqrt(mean(x**2) + epsilon)) * weight)`` with float32 math and the
    roundings transformers makes (``T`` is the storage dtype). ``out`` may be
    ``input`` itself.

    Args:
        out: same shape and dtype as ``input``, written in place.
        input: ``[..., hidden_size]``, float32, bfloat16 or float16, contiguous in the
            last dimension (leading dimensions may be strided).
        weight: ``[hidden_size]``, the input's dtype.
        epsilon: added to the mean square; non-negative.
    """
    _ensure_loaded()
    torch.ops.corral.rms_norm(out, input, weight, epsilon)


def fused_add_rms_norm(
    input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
) -> None:
    """``residual += input`` then ``input = rms_norm(residual)``, both in place, in one pass.

    The sum is rounded to the storage dtype before it is normalized, as a separate
    add would round it.

    Args:
        input: ``[..., hidden_size]``; receives the normalized sum.
        residual: same shape and dtype, another tensor; receives the sum.
        weight: ``[hidden_size]``, the input's dtype.
        epsilon: added to the mean square; non-negative.
    """
    _ensure_loaded()
    torch.ops.corral.fused_add_rms_norm(input, residual, weight, epsilon)


def silu_and_mul(out: torch.Tensor, input: torch.Tensor) -> None:
    """SwiGLU's gate: ``out = silu(input[..., :d]) * input[..., d:]``.

    Args:
        out: ``[..., d]``, the input's dtype, written in place.
        input: ``[..., 2 * d]`` (gate then up), contiguous in the last dimension.
    """
    _ensure_loaded()
    torch.ops.corral.silu_and_mul(out, input)


def gelu_tanh(out: torch.Tensor, input: torch.Tensor) -> None:
    """The tanh approximation of GELU (GPT-2's ``gelu_new``), into ``out``.

    Args:
        out: same shape and dtype as ``input``, written in place.
        input: ``[..., n]``, contiguous in the last dimension.
    """
    _ensure_loaded()
    torch.ops.corral.gelu_tanh(out, input)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> None:
    """Rotate every head of ``query`` and ``key`` in place at its token's position.

    The first ``rot_dim`` entries of each head are rotated (the rest are left as
    they are): in the neox layout entry ``i`` pairs with ``i + rot_dim / 2``, in the
    GPT-J layout entries ``2i`` and ``2i + 1`` pair; pair ``i`` turns by the angle
    whose cosine and sine are ``cos_sin_cache[pos, i]`` and
    ``cos_sin_cache[pos, rot_dim / 2 + i]``.

    Args:
        positions: int64 ``[num_tokens]``, each below ``max_position``.
        query: ``[num_tokens, num_heads * head_size]`` or ``[num_tokens, num_heads,
            head_size]``, contiguous in the last dimension (a view of a fused qkv
            output is fine).
        key: the same for the kv heads, the query's dtype.
        head_size: size of one head.
        cos_sin_cache: contiguous ``[max_position, rot_dim]``, float32 or the query's
            dtype; ``rot_dim`` even and at most ``head_size``.
        is_neox: rotate-half layout (Llama, neox) rather than interleaved (GPT-J).
    """
    _ensure_loaded()
    torch.ops.corral.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)


def token_logprobs(out: torch.Tensor, logits: torch.Tensor, token_ids: torch.Tensor) -> None:
    """Each row's log-probability of one token: ``log_softmax(logits[r])[token_ids[r]]``.

    Reads each row once (max, then the sum of exponentials) and writes no
    ``[rows, vocab]`` result, so a sampler reports the chosen token's logprob
    without a full log-softmax.

    Args:
        out: float32 ``[rows]``, contiguous, written in place.
        logits: float32 ``[rows, vocab]``, contiguous in the vocab dimension.
        token_ids: int64 ``[rows]``, each in ``[0, vocab)``; on a CUDA ``logits``
            they may be on the CPU (no synchronisation) or on the device.
    """
    _ensure_loaded()
    torch.ops.corral.token_logprobs(out, logits, token_ids)


def greedy_sample(token_ids: torch.Tensor, logprobs: torch.Tensor, logits: torch.Tensor) -> None:
    """Greedy rows in one read of the logits: each row's token and its log-probability.

    ``token_ids[r]`` is the first index of the maximum of ``logits[r]`` (the first NaN
    if the row has one, as ``torch.max``), and ``logprobs[r]`` its log-probability
    in float32 (``log_softmax(logits[r].float())[token]``, NaN for a NaN row). The
    logits may stay in the model's dtype: no float32 copy of ``[rows, vocab]``.

    Args:
        token_ids: int64 ``[rows]``, contiguous, written in place.
        logprobs: float32 ``[rows]``, contiguous, written in place.
        logits: float32, bfloat16 or float16 ``[rows, vocab]``, contiguous in the vocab
            dimension; vocab at most 2^24.
    """
    _ensure_loaded()
    torch.ops.corral.greedy_sample(token_ids, logprobs, logits)


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_slots: torch.Tensor,
    output_slices: list[int],
) -> None:
    """Add each token's LoRA delta to a linear layer's output, in place, for many adapters.

    The output columns are cut into ``output_slices`` (one slice per fused projection:
    q, k, v of a fused qkv layer; a single slice for a plain layer). For token ``t``
    with ``s = token_slots[t] >= 0`` and slice ``j`` covering columns ``[c0, c1)``::

        out[t, c0:c1] += (x[t] @ lora_a[s, j*R:(j+1)*R].T) @ lora_b[s, :, c0:c1]

    where ``R = lora_b.shape[1]`` (the padded rank: an adapter of smaller rank leaves
    zeros in its extra rows). A token with slot -1 is left alone. The adapter's
    scaling is folded into ``lora_b``. Math is float32; the ``x @ A.T`` product is
    rounded to the storage dtype first, as PEFT's ``lora_A`` output is.

    Args:
        out: ``[num_tokens, out_features]``, contiguous in the last dimension.
        x: ``[num_tokens, in_features]``, contiguous in the last dimension; float32,
            bfloat16 or float16 (every tensor but ``token_slots`` has this dtype).
        lora_a: contiguous ``[max_loras, len(output_slices) * R, in_features]``.
        lora_b: contiguous ``[max_loras, R, out_features]``.
        token_slots: int64 ``[num_tokens]``, each in ``[-1, max_loras)``, checked before
            anything is read through it; on a CUDA ``x`` it may be on the CPU (no
            synchronisation) or on the device.
        output_slices: positive column counts summing to ``out_features``.
    """
    _ensure_loaded()
    torch.ops.corral.add_lora(out, x, lora_a, lora_b, token_slots, output_slices)
