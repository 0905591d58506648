"""Linear layers that fuse several checkpoint matrices into one GEMM."""

from __future__ import annotations

import torch
from torch import nn


class MergedLinear(nn.Linear):
    """One linear layer whose output rows are the concatenation of named shards.

    Checkpoints store q/k/v (or gate/up) as separate matrices; running them as one
    GEMM reads the activations once. ``load_shard`` places a checkpoint matrix in
    its rows.

    Args:
        in_features: Input size.
        shard_sizes: Output rows per shard, in order (e.g. ``{"q": 512, "k": 128, "v": 128}``).
        bias: Whether the layer has a bias (one per shard, fused the same way).
    """

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool) -> None:
        super().__init__(in_features, sum(shard_sizes.values()), bias=bias)
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for shard, size in shard_sizes.items():
            self.shard_offsets[shard] = (offset, size)
            offset += size

    def load_shard(self, shard: str, param_name: str, tensor: torch.Tensor) -> None:
        """Copy ``tensor`` (a checkpoint ``weight`` or ``bias``) into the rows of ``shard``."""
        offset, size = self.shard_offsets[shard]
        param = self.weight if param_name == "weight" else self.bias
        if param is None:
            raise ValueError(
                f"checkpoint has a {param_name} for shard {shard!r}; the layer has none"
            )
        target = param.data.narrow(0, offset, size)
        if target.shape != tensor.shape:
            raise ValueError(
                f"checkpoint shard {shard!r} {param_name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        target.copy_(tensor)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a fused output back into its shards along the last dimension."""
        return out.split([size for _, size in self.shard_offsets.values()], dim=-1)
