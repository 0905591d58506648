"""Activations, selected by the names HF configs use."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from corral import ops


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (GPT-2's ``gelu_new``), in one native pass."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    ops.gelu_tanh(out, x)
    return out


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": F.relu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name`` in an HF config.

    Raises:
        ValueError: for a name corral does not implement.
    """
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"hidden_act: activation {name!r} is not supported (known: {sorted(_ACTIVATIONS)})"
        ) from None
