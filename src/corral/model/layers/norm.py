"""Normalization layers, computed the way the reference checkpoints were trained."""

from __future__ import annotations

import torch
from torch import nn

from corral import ops


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama family), through the native fused kernels.

    The statistics are taken in float32 and the result is rounded to the
    activation dtype before the weight is applied, the order transformers uses, so
    bfloat16 outputs round at the same place (see `corral.ops.rms_norm`).
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        ops.rms_norm(out, x, self.weight, self.eps)
        return out

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual + x`` and its norm, in one pass, written over both tensors.

        Returns:
            (normalized sum, sum): the tensors ``x`` and ``residual`` themselves.
        """
        ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
        return x, residual


class LayerNorm(nn.LayerNorm):
    """Standard LayerNorm with bias (GPT-2); a named subclass so models read uniformly."""
