"""Reading checkpoint tensors from a local model folder, and random weights for benchmarks.

Checkpoint tensors are handed out unread where the format allows (`CheckpointSlice` over
safetensors, memory-mapped tensors for pytorch_model.bin): a tensor-parallel rank narrows
each to its own rows or columns first, so it reads only its slice of the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


def checkpoint_files(folder: str) -> list[str]:
    """The weight files of a model folder, safetensors preferred over pytorch_model.bin.

    A sharded checkpoint is read through its index so stray files are ignored.

    Raises:
        ValueError: when the folder holds no weights corral can read.
    """
    for index_name in (_SAFETENSORS_INDEX, _BIN_INDEX):
        index_path = os.path.join(folder, index_name)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(folder, shard) for shard in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, single)
        if os.path.isfile(path):
            return [path]
    raise ValueError(
        f"model: no model.safetensors, pytorch_model.bin or shard index in {folder!r} "
        "(use load_format='dummy' for random weights)"
    )


class CheckpointSlice:
    """A safetensors tensor not read yet; `narrow` and `t` select without reading.

    Args:
        source: safetensors' slice handle (``safe_open(...).get_slice(name)``).
        ranges: ``(start, length)`` per dimension of the stored tensor; None: all of it.
        transposed: Whether this view is the stored 2-D tensor's transpose.
    """

    def __init__(
        self,
        source: Any,
        ranges: tuple[tuple[int, int], ...] | None = None,
        transposed: bool = False,
    ) -> None:
        self._source = source
        self._ranges = ranges or tuple((0, n) for n in source.get_shape())
        self._transposed = transposed

    @property
    def shape(self) -> torch.Size:
        sizes = [length for _, length in self._ranges]
        return torch.Size(reversed(sizes) if self._transposed else sizes)

    def dim(self) -> int:
        return len(self._ranges)

    def t(self) -> CheckpointSlice:
        if self.dim() != 2:
            raise ValueError(f"t(): the checkpoint tensor has {self.dim()} dimensions, not 2")
        return CheckpointSlice(self._source, self._ranges, not self._transposed)

    def narrow(self, dim: int, start: int, length: int) -> CheckpointSlice:
        stored_dim = 1 - dim if self._transposed else dim
        base, size = self._ranges[stored_dim]
        if start < 0 or length < 0 or start + length > size:
            raise ValueError(f"narrow({dim}, {start}, {length}) is outside {tuple(self.shape)}")
        ranges = list(self._ranges)
        ranges[stored_dim] = (base + start, length)
        return CheckpointSlice(self._source, tuple(ranges), self._transposed)

    def load(self) -> torch.Tensor:
        """Read the selected part from the file."""
        tensor = self._source[tuple(slice(a, a + n) for a, n in self._ranges)]
        return tensor.t() if self._transposed else tensor


CheckpointTensor = torch.Tensor | CheckpointSlice
"""A checkpoint tensor, read (a tensor, maybe memory-mapped) or not yet (a `CheckpointSlice`)."""


def materialize(tensor: CheckpointTensor) -> torch.Tensor:
    """The tensor's values (reads a `CheckpointSlice` from its file)."""
    return tensor.load() if isinstance(tensor, CheckpointSlice) else tensor


ShardLoader = Callable[[CheckpointTensor], torch.Tensor]
"""Attached to a sharded parameter as ``shard_loader``: the checkpoint's full tensor in,
this rank's part out (raising ValueError when the full tensor has the wrong shape)."""


def iterate_checkpoint(folder: str) -> Iterator[tuple[str, CheckpointTensor]]:
    """Yield (name, tensor) for every tensor in the folder's checkpoint, one file at a time.

    Tensors are not read until `materialize`d, so that a rank can narrow first.
    """
    from safetensors import safe_open

    for path in checkpoint_files(folder):
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    yield name, CheckpointSlice(f.get_slice(name))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()
            del state


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Fill a model with small random weights, reproducibly from ``seed``.

    Norm scales become 1 and biases 0 so activations stay in a realistic range;
    matrices are drawn from N(0, 0.02), the usual initialization scale, so logits
    are spread out rather than degenerate.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if param.dim() == 1:
                param.fill_(0.0 if leaf == "bias" else 1.0)
                continue
            values = torch.empty(param.shape, dtype=torch.float32)
            values.normal_(0.0, 0.02, generator=generator)
            param.copy_(values)


StackedParams = list[tuple[str, str, str]]
"""(checkpoint module name, fused module name, shard) triples, e.g. ("q_proj", "qkv_proj", "q")."""


def load_weights(
    model: nn.Module,
    weights: Iterator[tuple[str, CheckpointTensor]],
    stacked: StackedParams,
) -> None:
    """Copy checkpoint tensors into ``model``, fusing stacked matrices into their shards.

    Names must already be in the model's naming (models rename before calling).
    Every parameter must be filled exactly once: a missing, unexpected or
    mis-shaped tensor raises, so a half-loaded model never runs.

    Raises:
        ValueError: naming the offending tensor.
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    expected = set(params)
    for fused_module in {fused for _, fused, _ in stacked}:
        for module_name, module in modules.items():
            if module_name.endswith(fused_module) and hasattr(module, "shard_offsets"):
                expected.discard(f"{module_name}.weight")
                expected.discard(f"{module_name}.bias")
                for shard in module.shard_offsets:
                    expected.add(f"{module_name}.{shard}.weight")
                    if module.bias is not None:
                        expected.add(f"{module_name}.{shard}.bias")
    loaded: set[str] = set()
    for name, tensor in weights:
        module_name, leaf = name.rsplit(".", 1)
        key = name
        for hf_part, fused_part, shard in stacked:
            if module_name.endswith(f".{hf_part}"):
                fused_name = module_name[: -len(hf_part)] + fused_part
                modules[fused_name].load_shard(shard, leaf, tensor)  # type: ignore[operator]
                key = f"{fused_name}.{shard}.{leaf}"
                break
        else:
            if name not in params:
                raise ValueError(
                    f"checkpoint tensor {name!r} has no place in {type(model).__name__}"
                )
            shard_loader: ShardLoader | None = getattr(params[name], "shard_loader", None)
            if shard_loader is not None:
                try:
                    value = shard_loader(tensor)
                except ValueError as exc:
                    raise ValueError(f"checkpoint tensor {name!r}: {exc}") from None
            elif params[name].shape != tensor.shape:
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(params[name].shape)}"
                )
            else:
                value = materialize(tensor)
            with torch.no_grad():
                params[name].copy_(value)
        loaded.add(key)
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:5]}")
