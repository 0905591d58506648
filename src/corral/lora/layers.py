"""`LoRALinear`: a projection of the base model plus the LoRA deltas of the step's adapters.

The model's code is not touched: after the model is built, `wrap_model` replaces each
target projection by a `LoRALinear` holding it, under the same name. The wrapper
answers the fused layer's ``split`` and ``shard_offsets`` by delegation, so the
model's forward reads the same with or without LoRA.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from corral import ops
from corral.lora.adapter import TargetModule


@attrs.define
class LoRABatch:
    """The step's per-token adapter slots, shared by every wrapped projection.

    ``token_slots`` is int64 ``[num_tokens]`` on the CPU (-1: base model only), or None when no token of the step uses an adapter (the wrappers then
    cost one attribute read).
    """

    token_slots: torch.Tensor | None = None


class LoRALinear(nn.Module):
    """``base(x)`` plus, for each token, the delta of the adapter in its slot.

    Args:
        base: The wrapped projection (an ``nn.Linear`` or a fused ``MergedLinear``).
        target: Its shape facts (`corral.lora.adapter.find_targets`).
        batch: The step's token slots, shared with the other wrappers.
        max_loras: Device slots.
        max_rank: Rank every slot is padded to.
    """

    def __init__(
        self,
        base: nn.Module,
        target: TargetModule,
        batch: LoRABatch,
        max_loras: int,
        max_rank: int,
    ) -> None:
        super().__init__()
        self.base = base
        self.target = target
        self.batch = batch
        self.max_rank = max_rank
        self.output_slices = [size for _, size in target.shards]
        self.shard_index = {name: i for i, (name, _) in enumerate(target.shards)}
        weight: torch.Tensor = base.weight  # type: ignore[assignment]
        num_slices = len(target.shards)
        self.lora_a = torch.zeros(
            (max_loras, num_slices * max_rank, target.in_features),
            dtype=weight.dtype,
            device=weight.device,
        )
        self.lora_b = torch.zeros(
            (max_loras, max_rank, target.out_features), dtype=weight.dtype, device=weight.device
        )
        # Slots holding weights for this projection; a step whose adapters all skip it
        # runs the base projection alone.
        self.slot_used = [False] * max_loras

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base"], name)

    def set_slot(
        self, slot: int, shards: dict[str, tuple[torch.Tensor, torch.Tensor]] | None
    ) -> None:
        """Put an adapter's weights for this projection in ``slot`` (None: clear it)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.slot_used[slot] = bool(shards)
        if not shards:
            return
        offset = 0
        offsets = []
        for size in self.output_slices:
            offsets.append(offset)
            offset += size
        for name, (a, b) in shards.items():
            j = self.shard_index[name]
            r = a.shape[0]
            rows = slice(j * self.max_rank, j * self.max_rank + r)
            self.lora_a[slot, rows].copy_(a)
            cols = slice(offsets[j], offsets[j] + self.output_slices[j])
            self.lora_b[slot, :r, cols].copy_(b.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        token_slots = self.batch.token_slots
        if token_slots is None or not any(self.slot_used):
            return out
        ops.add_lora(
            out.view(-1, out.shape[-1]),
            x.reshape(-1, x.shape[-1]),
            self.lora_a,
            self.lora_b,
            token_slots,
            self.output_slices,
        )
        return out


def wrap_model(
    model: nn.Module,
    targets: dict[str, TargetModule],
    batch: LoRABatch,
    max_loras: int,
    max_rank: int,
) -> dict[str, LoRALinear]:
    """Replace each target projection of ``model`` by a `LoRALinear`, in place.

    Returns:
        The wrappers by module path (the same paths as ``targets``).
    """
    wrappers: dict[str, LoRALinear] = {}
    for path, target in targets.items():
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        wrapper = LoRALinear(getattr(parent, leaf), target, batch, max_loras, max_rank)
        setattr(parent, leaf, wrapper)
        wrappers[path] = wrapper
    return wrappers
