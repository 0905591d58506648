"""Reading checkpoint tensors from a local model folder, and random weights for benchmarks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

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


def iterate_checkpoint(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor in the folder's checkpoint, one file at a time."""
    from safetensors import safe_open

    for path in checkpoint_files(folder):
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
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
    weights: Iterator[tuple[str, torch.Tensor]],
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
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(params[name].shape)}"
                )
            with torch.no_grad():
                params[name].copy_(tensor)
        loaded.add(key)
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:5]}")
