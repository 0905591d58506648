"""The Llama family: Llama (incl. Llama 3 rope scaling), Mistral, Qwen2 and Qwen3.

They share one decoder; the differences are config flags: q/k/v biases (Qwen2,
``attention_bias``), per-head q/k RMSNorm (Qwen3), and a sliding window on all
layers (Mistral) or on the layers marked ``sliding_attention`` (Qwen2/Qwen3).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from torch import nn

from corral import ops
from corral.model.config import hf_head_size, hf_num_kv_heads
from corral.model.layers.activation import get_activation
from corral.model.layers.attention import AttentionMetadata, KVCache, PagedAttention
from corral.model.layers.linear import MergedLinear, RowParallelLinear
from corral.model.layers.norm import RMSNorm
from corral.model.layers.parallel import ParallelLMHead, VocabParallelEmbedding, split_heads
from corral.model.layers.rotary import RotaryEmbedding, rope_settings
from corral.model.parallel_state import SINGLE, TensorParallelGroup
from corral.model.weights import CheckpointTensor, StackedParams, load_weights

Rope = Callable[[torch.Tensor, torch.Tensor], None]
"""Rotates (query, key) in place at the batch's positions; built once per forward."""


@attrs.frozen
class _Variant:
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool


def _variant(architecture: str, hf_config: Any) -> _Variant:
    attention_bias = bool(getattr(hf_config, "attention_bias", False))
    if architecture == "Qwen2ForCausalLM":
        return _Variant(qkv_bias=True, o_bias=False, qk_norm=False)
    if architecture == "Qwen3ForCausalLM":
        return _Variant(qkv_bias=attention_bias, o_bias=attention_bias, qk_norm=True)
    return _Variant(qkv_bias=attention_bias, o_bias=attention_bias, qk_norm=False)


def _sliding_window(hf_config: Any, layer: int) -> int | None:
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer] == "sliding_attention" else None
    return window


class LlamaAttention(nn.Module):
    def __init__(
        self, hf_config: Any, variant: _Variant, layer: int, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        num_heads = int(hf_config.num_attention_heads)
        num_kv_heads = hf_num_kv_heads(hf_config)
        self.head_size = hf_head_size(hf_config)
        heads = split_heads(num_heads, num_kv_heads, tp)
        self.num_heads = heads.num_heads
        self.num_kv_heads = heads.num_kv_heads
        q_size = num_heads * self.head_size
        kv_size = num_kv_heads * self.head_size
        kv_slice = (heads.first_kv_head * self.head_size, heads.num_kv_heads * self.head_size)
        self.qkv_proj = MergedLinear(
            hf_config.hidden_size,
            {"q": q_size, "k": kv_size, "v": kv_size},
            bias=variant.qkv_bias,
            tp=tp,
            shard_slices={
                "q": (heads.first_head * self.head_size, heads.num_heads * self.head_size),
                "k": kv_slice,
                "v": kv_slice,
            },
        )
        self.o_proj = RowParallelLinear(q_size, hf_config.hidden_size, variant.o_bias, tp)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if variant.qk_norm:
            self.q_norm = RMSNorm(self.head_size, hf_config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_size, hf_config.rms_norm_eps)
        self.attn = PagedAttention(
            self.num_heads,
            self.num_kv_heads,
            self.head_size,
            scale=self.head_size**-0.5,
            sliding_window=_sliding_window(hf_config, layer),
        )

    def forward(
        self,
        rope: Rope,
        hidden: torch.Tensor,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        q, k, v = self.qkv_proj.split(self.qkv_proj(hidden))
        num_tokens = hidden.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        rope(q, k)
        return self.o_proj(self.attn(q, k, v, kv_cache, metadata))


class LlamaMLP(nn.Module):
    def __init__(self, hf_config: Any, tp: TensorParallelGroup) -> None:
        super().__init__()
        size = int(hf_config.intermediate_size)
        bias = bool(getattr(hf_config, "mlp_bias", False))
        self.gate_up_proj = MergedLinear(
            hf_config.hidden_size, {"gate": size, "up": size}, bias, tp
        )
        self.down_proj = RowParallelLinear(size, hf_config.hidden_size, bias, tp)
        self.fused_silu = hf_config.hidden_act in ("silu", "swish")
        self.act = get_activation(hf_config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(hidden)
        if self.fused_silu:
            out = gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))
            ops.silu_and_mul(out, gate_up)
            return self.down_proj(out)
        gate, up = self.gate_up_proj.split(gate_up)
        return self.down_proj(self.act(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, hf_config: Any, variant: _Variant, layer: int, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(hf_config, variant, layer, tp)
        self.mlp = LlamaMLP(hf_config, tp)
        self.input_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(
        self,
        rope: Rope,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLP output, residual stream before it); the next layer's norm adds the two.

        Carrying the residual separately lets each residual add run inside the next
        norm's kernel (`RMSNorm.add_and_norm`).
        """
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(rope, hidden, kv_cache, metadata)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self, hf_config: Any, variant: _Variant, max_positions: int, tp: TensorParallelGroup
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(hf_config.vocab_size, hf_config.hidden_size, tp)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(hf_config, variant, i, tp) for i in range(hf_config.num_hidden_layers)
        )
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        base, scaling = rope_settings(hf_config)
        self.rotary = RotaryEmbedding(hf_head_size(hf_config), max_positions, base, scaling)


class LlamaForCausalLM(nn.Module):
    """Decoder-only Llama-style model over a flattened varlen batch.

    Args:
        architecture: The HF architecture name (selects the variant's flags).
        hf_config: The transformers config.
        max_positions: Longest context; sizes the rotary table.
        tp: The tensor-parallel group this model is a shard of (heads, MLP features
            and vocabulary are split over its ranks).
    """

    def __init__(
        self,
        architecture: str,
        hf_config: Any,
        max_positions: int,
        tp: TensorParallelGroup = SINGLE,
    ) -> None:
        super().__init__()
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        variant = _variant(architecture, hf_config)
        self.model = LlamaModel(hf_config, variant, max_positions, tp)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size, tp)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Final hidden states [num_tokens, hidden_size] of the batch's tokens."""
        hidden = self.model.embed_tokens(input_ids)
        rope = functools.partial(self.model.rotary, positions)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            hidden, residual = layer(rope, hidden, residual, kv_cache, metadata)
        if residual is None:
            return self.model.norm(hidden)
        return self.model.norm.add_and_norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor | None:
        """Logits [rows, vocab_size] of the given hidden states (None off rank 0): float32,
        or the model's dtype with ``float32=False``."""
        return self.lm_head.logits(hidden, float32)

    def load_weights(self, weights: Iterator[tuple[str, CheckpointTensor]]) -> None:
        """Load an HF checkpoint's tensors (q/k/v and gate/up are fused on the way in)."""
        stacked: StackedParams = [
            ("q_proj", "qkv_proj", "q"),
            ("k_proj", "qkv_proj", "k"),
            ("v_proj", "qkv_proj", "v"),
            ("gate_proj", "gate_up_proj", "gate"),
            ("up_proj", "gate_up_proj", "up"),
        ]

        def renamed() -> Iterator[tuple[str, CheckpointTensor]]:
            for name, tensor in weights:
                if "rotary_emb.inv_freq" in name:
                    continue
                if name == "lm_head.weight" and self.tie_word_embeddings:
                    continue
                yield name, tensor

        load_weights(self, renamed(), stacked)
