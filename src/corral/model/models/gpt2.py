"""GPT-2: learned absolute positions, pre-LayerNorm blocks, Conv1D checkpoint weights."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from corral.model.layers.activation import get_activation
from corral.model.layers.attention import AttentionMetadata, KVCache, PagedAttention
from corral.model.layers.linear import ColumnParallelLinear, RowParallelLinear
from corral.model.layers.norm import LayerNorm
from corral.model.layers.parallel import VocabParallelEmbedding, split_heads
from corral.model.parallel_state import SINGLE, TensorParallelGroup
from corral.model.weights import CheckpointTensor, load_weights

# GPT-2 checkpoints store these as Conv1D, [in_features, out_features]: the transpose
# of nn.Linear's layout.
_CONV1D_MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class GPT2Attention(nn.Module):
    def __init__(self, hf_config: Any, tp: TensorParallelGroup) -> None:
        super().__init__()
        hidden = int(hf_config.n_embd)
        num_heads = int(hf_config.n_head)
        self.head_size = hidden // num_heads
        self.num_heads = split_heads(num_heads, num_heads, tp).num_heads
        # The checkpoint's c_attn rows are q | k | v: each rank takes its heads of all three.
        self.c_attn = ColumnParallelLinear(hidden, 3 * hidden, True, tp, partitions=3)
        self.c_proj = RowParallelLinear(hidden, hidden, True, tp)
        scale = self.head_size**-0.5 if getattr(hf_config, "scale_attn_weights", True) else 1.0
        self.attn = PagedAttention(self.num_heads, self.num_heads, self.head_size, scale)

    def forward(
        self, hidden: torch.Tensor, kv_cache: KVCache, metadata: AttentionMetadata
    ) -> torch.Tensor:
        shape = (hidden.shape[0], self.num_heads, self.head_size)
        q, k, v = self.c_attn(hidden).chunk(3, dim=-1)
        out = self.attn(q.reshape(shape), k.reshape(shape), v.reshape(shape), kv_cache, metadata)
        return self.c_proj(out)


class GPT2MLP(nn.Module):
    def __init__(self, hf_config: Any, tp: TensorParallelGroup) -> None:
        super().__init__()
        hidden = int(hf_config.n_embd)
        inner = int(hf_config.n_inner or 4 * hidden)
        self.c_fc = ColumnParallelLinear(hidden, inner, True, tp)
        self.c_proj = RowParallelLinear(inner, hidden, True, tp)
        self.act = get_activation(hf_config.activation_function)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(hidden)))


class GPT2Block(nn.Module):
    def __init__(self, hf_config: Any, tp: TensorParallelGroup) -> None:
        super().__init__()
        hidden = int(hf_config.n_embd)
        self.ln_1 = LayerNorm(hidden, eps=hf_config.layer_norm_epsilon)
        self.attn = GPT2Attention(hf_config, tp)
        self.ln_2 = LayerNorm(hidden, eps=hf_config.layer_norm_epsilon)
        self.mlp = GPT2MLP(hf_config, tp)

    def forward(
        self, hidden: torch.Tensor, kv_cache: KVCache, metadata: AttentionMetadata
    ) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), kv_cache, metadata)
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    def __init__(self, hf_config: Any, tp: TensorParallelGroup) -> None:
        super().__init__()
        self.wte = VocabParallelEmbedding(hf_config.vocab_size, hf_config.n_embd, tp)
        self.wpe = nn.Embedding(hf_config.n_positions, hf_config.n_embd)
        self.h = nn.ModuleList(GPT2Block(hf_config, tp) for _ in range(hf_config.n_layer))
        self.ln_f = LayerNorm(hf_config.n_embd, eps=hf_config.layer_norm_epsilon)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 over a flattened varlen batch; the output head is tied to the token embedding.

    Args:
        architecture: The HF architecture name (only GPT2LMHeadModel).
        hf_config: The transformers GPT2Config.
        max_positions: Unused beyond validation: GPT-2's position table is learned.
        tp: The tensor-parallel group this model is a shard of.
    """

    def __init__(
        self,
        architecture: str,
        hf_config: Any,
        max_positions: int,
        tp: TensorParallelGroup = SINGLE,
    ) -> None:
        super().__init__()
        if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
            raise ValueError("scale_attn_by_inverse_layer_idx: not supported yet")
        if max_positions > hf_config.n_positions:
            raise ValueError(
                f"max_model_len: {max_positions} exceeds GPT-2's {hf_config.n_positions} "
                "learned positions"
            )
        self.transformer = GPT2Model(hf_config, tp)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Final hidden states [num_tokens, n_embd] of the batch's tokens."""
        hidden = self.transformer.wte(input_ids) + self.transformer.wpe(positions)
        for block, kv_cache in zip(self.transformer.h, kv_caches, strict=True):
            hidden = block(hidden, kv_cache, metadata)
        return self.transformer.ln_f(hidden)

    def compute_logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor | None:
        """Logits [rows, vocab_size] through the tied token embedding (None off rank 0):
        float32, or the model's dtype with ``float32=False``."""
        return self.transformer.wte.logits(hidden, float32)

    def load_weights(self, weights: Iterator[tuple[str, CheckpointTensor]]) -> None:
        """Load an HF GPT-2 checkpoint (with or without the ``transformer.`` prefix)."""

        def renamed() -> Iterator[tuple[str, CheckpointTensor]]:
            for name, tensor in weights:
                if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
                    continue
                if not name.startswith("transformer."):
                    name = f"transformer.{name}"
                if name.endswith(".weight") and any(m in name for m in _CONV1D_MODULES):
                    tensor = tensor.t()
                yield name, tensor

        load_weights(self, renamed(), stacked=[])
