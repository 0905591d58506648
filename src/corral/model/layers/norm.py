"""Normalization layers, computed the way the reference checkpoints were trained."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama family).

    The statistics are taken in float32 and the result is cast back before the
    weight is applied, the order transformers uses, so float32 outputs match it
    bit for bit and bfloat16 outputs round at the same place.
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        x32 = x32 * torch.rsqrt(variance + self.eps)
        return self.weight * x32.to(input_dtype)


class LayerNorm(nn.LayerNorm):
    """Standard LayerNorm with bias (GPT-2); a named subclass so models read uniformly."""
