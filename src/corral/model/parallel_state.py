"""The tensor-parallel group a model shard belongs to, and the collectives its layers run.

The group is an explicit object handed to the model at construction, not process-wide
state: a process can hold several engines (a driver serving two models, a test session),
each with its own group.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch


@attrs.frozen
class TensorParallelGroup:
    """This process's place among the ranks that share one model.

    Attributes:
        rank: This shard's index, 0 .. world_size - 1 (rank 0 samples).
        world_size: How many ranks the model is split over.
        process_group: The torch.distributed process group (gloo on CPU, NCCL on CUDA)
            that connects the ranks; None when ``world_size`` is 1.
    """

    rank: int = 0
    world_size: int = 1
    process_group: Any = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: {self.rank} is not in 0..{self.world_size - 1}")
        if self.world_size > 1 and self.process_group is None:
            raise ValueError(f"world_size: {self.world_size} ranks need a process group")

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def split(self, size: int, what: str) -> int:
        """This rank's part of ``size`` items that are split evenly over the ranks.

        Raises:
            ValueError: naming ``what`` when the ranks cannot share it evenly.
        """
        if size % self.world_size:
            raise ValueError(
                f"{what}: {size} is not divisible by tensor_parallel_size {self.world_size}"
            )
        return size // self.world_size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; every rank gets the sum."""
        if self.world_size > 1:
            self.process_group.allreduce([tensor]).wait()
        return tensor

    def gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Rank 0: the ranks' tensors concatenated along the last dimension; others: None.

        Every rank must pass a tensor of the same shape.
        """
        if self.world_size == 1:
            return tensor
        tensor = tensor.contiguous()
        if self.rank == 0:
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            self.process_group.gather([parts], [tensor], _gather_options()).wait()
            return torch.cat(parts, dim=-1)
        self.process_group.gather([], [tensor], _gather_options()).wait()
        return None


SINGLE = TensorParallelGroup()
"""The group of a model that is not split."""


def _gather_options() -> Any:
    import torch.distributed as dist

    options = dist.GatherOptions()
    options.rootRank = 0
    return options
