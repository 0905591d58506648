"""Attention over the paged KV cache through corral's native ops."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from corral import ops


@attrs.frozen
class AttentionMetadata:
    """Where this step's tokens go in the cache and what each sequence attends to.

    One instance serves every layer of a forward pass; the layout is the native
    ops' varlen layout (see ``corral.ops``).

    Attributes:
        slot_mapping: int64 [num_tokens]; cache slot of each token's key/value.
        query_start_loc: int32 [num_seqs + 1]; token offsets of each sequence.
        seq_lens: int32 [num_seqs]; context length after this step.
        block_tables: int32 [num_seqs, max_blocks]; each sequence's blocks, zero-padded.
    """

    slot_mapping: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor


KVCache = tuple[torch.Tensor, torch.Tensor]
"""One layer's (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_size]."""


class PagedAttention(nn.Module):
    """Writes this step's keys/values to the cache, then attends causally over the context.

    Args:
        num_heads: Query heads.
        num_kv_heads: Key/value heads; ``num_heads`` must be a multiple (GQA/MQA).
        head_size: Size of one head.
        scale: Multiplier of the query-key dot products.
        sliding_window: Keys older than this many positions are not attended (None: no window).
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_size: int,
        scale: float,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_key_value_heads: {num_kv_heads} does not divide num_attention_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.scale = scale
        self.sliding_window = -1 if sliding_window is None else sliding_window

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Attention output [num_tokens, num_heads * head_size].

        ``query`` is [num_tokens, num_heads, head_size]; ``key`` and ``value`` are
        [num_tokens, num_kv_heads, head_size].
        """
        key_cache, value_cache = kv_cache
        ops.reshape_and_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        out = torch.empty_like(query)
        ops.paged_attention(
            out,
            query.contiguous(),
            key_cache,
            value_cache,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables,
            self.scale,
            self.sliding_window,
        )
        return out.view(out.shape[0], self.num_heads * self.head_size)
