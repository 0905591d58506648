"""Rotary position embedding (rotate-half layout), including Llama 3 and linear scaling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from corral import ops


def rope_settings(hf_config: Any) -> tuple[float, dict[str, Any]]:
    """The rope base and the scaling parameters of an HF config.

    transformers 5 keeps everything in ``rope_parameters``; older configs carry
    ``rope_theta`` and an optional ``rope_scaling`` dict. Both are read.
    """
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None)
    if scaling:
        params = {**dict(scaling), **params}
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None) or 10000.0)
    return float(theta), params


def _inv_freq(rotary_dim: int, base: float, scaling: dict[str, Any]) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    inv_freq = 1.0 / (base**exponents)
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"rope_parameters.rope_type: {rope_type!r} is not supported yet")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band
    # between is interpolated, so the model keeps local resolution at long context.
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary embeddings of queries and keys at given positions (neox / rotate-half layout).

    The table holds cos and sin for every position up to ``max_positions`` in
    float32 (``cos_sin_cache`` [max_positions, head_size]: cos of each frequency,
    then sin), and the native kernel rotates in float32 whatever the activation
    dtype (`corral.ops.rotary_embedding`).

    Args:
        head_size: Size of one head; the whole head is rotated.
        max_positions: Positions the table covers (the longest context).
        base: The rope base (``rope_theta``).
        scaling: The config's rope parameters (``rope_type`` and its fields).
    """

    def __init__(
        self, head_size: int, max_positions: int, base: float, scaling: dict[str, Any]
    ) -> None:
        super().__init__()
        partial = scaling.get("partial_rotary_factor", 1.0)
        if partial not in (None, 1.0):
            raise ValueError(
                "partial_rotary_factor: partial rotary embeddings are not supported yet"
            )
        self.head_size = head_size
        inv_freq = _inv_freq(head_size, base, scaling)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        self.cos_sin_cache: torch.Tensor
        self.register_buffer(
            "cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), dim=-1), persistent=False
        )

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> None:
        """Rotate ``query`` [tokens, heads, head_size] and ``key`` [tokens, kv_heads,
        head_size] in place (views of a fused qkv output are fine)."""
        ops.rotary_embedding(positions, query, key, self.head_size, self.cos_sin_cache, True)
