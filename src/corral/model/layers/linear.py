"""Linear layers split over tensor-parallel ranks (Megatron-style), and fused ones.

A column-parallel layer holds a slice of the output features: its output stays split
and feeds a layer that works per head or per feature (attention, the MLP's
activation). A row-parallel layer holds the matching slice of the input features;
its partial products are summed over the ranks (one all-reduce) before the bias.
With one rank every layer here is a plain `nn.Linear`.
"""

from __future__ import annotations

import torch
from torch import nn

from corral.model.parallel_state import SINGLE, TensorParallelGroup
from corral.model.weights import CheckpointTensor, materialize

# Row count oneDNN is told to expect when a weight is packed (a decode batch); the
# packed layout serves every row count, and the measured speed did not depend on it.
PACK_ROWS_HINT = 64


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] reordered once into oneDNN's blocked layout (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def packed_linear(
    input: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear`` against a weight packed by `pack_weight`."""
    flat = input.reshape(-1, input.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
    return out.view(*input.shape[:-1], out.shape[-1])


class Linear(nn.Linear):
    """``nn.Linear`` whose weight can be prepacked for oneDNN (see `prepack`).

    On a CPU with hardware bfloat16, oneDNN multiplies bfloat16 on AMX tiles; given a
    plain weight it reorders it into its blocked layout on every call. Packing once at
    load time takes that cost away: 0.6x to 0.8x the time of ``F.linear`` at decode
    row counts and 0.95x at 2,048 rows (docs/kernels.md).
    """

    packed_weight: torch.Tensor | None = None

    def prepack(self) -> None:
        """Pack the weight and release the plain copy.

        The plain weight becomes a zero-stride view of one zero (its shape, dtype and
        device stay, its memory goes): a packed layer multiplies with the packed copy
        only, and writing the weight again fails loudly instead of being ignored.
        """
        weight = self.weight
        self.packed_weight = pack_weight(weight)
        weight.data = torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)

    def matmul(self, input: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``input @ weight.T (+ bias)``, with the packed weight when there is one."""
        if self.packed_weight is not None:
            return packed_linear(input, self.packed_weight, bias)
        return torch.nn.functional.linear(input, self.weight, bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.matmul(input, self.bias)


def _check_shape(tensor: CheckpointTensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(tensor.shape)}, expected {expected}")


class MergedLinear(Linear):
    """One column-parallel layer whose output rows are the concatenation of named shards.

    Checkpoints store q/k/v (or gate/up) as separate matrices; running them as one
    GEMM reads the activations once. ``load_shard`` places this rank's rows of a
    checkpoint matrix in its shard.

    Args:
        in_features: Input size.
        shard_sizes: Checkpoint rows per shard, in order (e.g. ``{"q": 512, "k": 128, "v": 128}``).
        bias: Whether the layer has a bias (one per shard, fused the same way).
        tp: The tensor-parallel group; each shard is split evenly over its ranks
            unless ``shard_slices`` says otherwise.
        shard_slices: ``(first row, rows)`` this rank takes of each checkpoint shard
            (e.g. a key/value head replicated on several ranks).

    Attributes:
        shard_offsets: ``(offset, size)`` of each shard in this rank's output rows.
    """

    def __init__(
        self,
        in_features: int,
        shard_sizes: dict[str, int],
        bias: bool,
        tp: TensorParallelGroup = SINGLE,
        shard_slices: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        slices = dict(shard_slices or {})
        for shard, size in shard_sizes.items():
            if shard not in slices:
                rows = tp.split(size, f"rows of {shard}")
                slices[shard] = (tp.rank * rows, rows)
        super().__init__(in_features, sum(rows for _, rows in slices.values()), bias=bias)
        self.shard_sizes = dict(shard_sizes)
        self.shard_slices = slices
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for shard in shard_sizes:
            rows = slices[shard][1]
            self.shard_offsets[shard] = (offset, rows)
            offset += rows

    def load_shard(self, shard: str, param_name: str, tensor: CheckpointTensor) -> None:
        """Copy this rank's rows of ``tensor`` (a checkpoint ``weight`` or ``bias``) into ``shard``."""
        offset, size = self.shard_offsets[shard]
        param = self.weight if param_name == "weight" else self.bias
        if param is None:
            raise ValueError(
                f"checkpoint has a {param_name} for shard {shard!r}; the layer has none"
            )
        expected = (self.shard_sizes[shard], *param.shape[1:])
        _check_shape(tensor, expected, f"checkpoint shard {shard!r} {param_name}")
        first, rows = self.shard_slices[shard]
        with torch.no_grad():
            param.data.narrow(0, offset, size).copy_(materialize(tensor.narrow(0, first, rows)))

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a fused output back into its shards along the last dimension."""
        return out.split([size for _, size in self.shard_offsets.values()], dim=-1)


class ColumnParallelLinear(Linear):
    """A linear layer holding this rank's share of the output features.

    Args:
        in_features: Input size.
        out_features: Output size of the whole layer.
        bias: Whether the layer has a bias.
        tp: The tensor-parallel group.
        partitions: Equal blocks the checkpoint's output rows fall into, each split over
            the ranks on its own (3 for GPT-2's fused q|k|v ``c_attn``); this rank's
            output is its part of every block, in block order.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        tp: TensorParallelGroup = SINGLE,
        partitions: int = 1,
    ) -> None:
        if out_features % partitions:
            raise ValueError(f"out_features: {out_features} is not {partitions} equal blocks")
        self.block_rows = tp.split(out_features // partitions, "output features")
        super().__init__(in_features, self.block_rows * partitions, bias=bias)
        self.global_out_features = out_features
        self.partitions = partitions
        self.tp = tp
        self.weight.shard_loader = self._select  # type: ignore[attr-defined]
        if self.bias is not None:
            self.bias.shard_loader = self._select  # type: ignore[attr-defined]

    def _select(self, tensor: CheckpointTensor) -> torch.Tensor:
        expected: tuple[int, ...] = (self.global_out_features,)
        if tensor.dim() != 1:
            expected = (self.global_out_features, self.in_features)
        _check_shape(tensor, expected, "the checkpoint tensor")
        block = self.global_out_features // self.partitions
        start = self.tp.rank * self.block_rows
        parts = [
            materialize(tensor.narrow(0, p * block + start, self.block_rows))
            for p in range(self.partitions)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class RowParallelLinear(Linear):
    """A linear layer holding this rank's share of the input features; outputs are summed.

    Its input is the split output of a column-parallel layer; each rank's partial
    product is all-reduced, then the (unsplit) bias is added once.

    Args:
        in_features: Input size of the whole layer.
        out_features: Output size.
        bias: Whether the layer has a bias.
        tp: The tensor-parallel group.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        tp: TensorParallelGroup = SINGLE,
    ) -> None:
        super().__init__(tp.split(in_features, "input features"), out_features, bias=bias)
        self.global_in_features = in_features
        self.tp = tp
        self.weight.shard_loader = self._select  # type: ignore[attr-defined]

    def _select(self, tensor: CheckpointTensor) -> torch.Tensor:
        _check_shape(tensor, (self.out_features, self.global_in_features), "the checkpoint tensor")
        return materialize(tensor.narrow(1, self.tp.rank * self.in_features, self.in_features))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return super().forward(input)
        out = self.tp.all_reduce(self.matmul(input))
        return out if self.bias is None else out.add_(self.bias)
