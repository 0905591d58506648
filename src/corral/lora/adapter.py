"""Reading a PEFT LoRA folder and checking it against the base model.

An adapter is read once, in a worker thread, into host tensors already mapped onto
corral's layout: PEFT's per-projection ``q_proj`` / ``k_proj`` / ``v_proj`` (and
``gate_proj`` / ``up_proj``) land in the shards of corral's fused ``qkv_proj`` (and
``gate_up_proj``), with the adapter's scaling folded into B. Every problem is a
`ValueError` naming the adapter and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any

import attrs
import torch
from torch import nn

from corral.lora.request import LoRARequest

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

# PEFT module name -> (corral's fused module name, shard); other targets keep their name.
FUSED_TARGETS: dict[str, tuple[str, str]] = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", "gate"),
    "up_proj": ("gate_up_proj", "up"),
}
PLAIN_TARGETS = ("o_proj", "down_proj", "c_attn", "c_proj", "c_fc")
SUPPORTED_TARGETS = (*FUSED_TARGETS, *PLAIN_TARGETS)
"""Every projection name corral applies LoRA to (attention and MLP of each architecture)."""

_WRAPPED_LEAVES = frozenset({fused for fused, _ in FUSED_TARGETS.values()} | set(PLAIN_TARGETS))

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$"
)
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save (fully trained extra modules)",
    "rank_pattern": "rank_pattern (per-module ranks)",
    "alpha_pattern": "alpha_pattern (per-module alphas)",
}


@attrs.frozen
class TargetModule:
    """A projection of the base model that LoRA can apply to.

    Attributes:
        in_features: Input size.
        shards: (shard name, output size) in output order; a plain projection has
            one shard named "".
    """

    in_features: int
    shards: tuple[tuple[str, int], ...]

    @property
    def out_features(self) -> int:
        return sum(size for _, size in self.shards)


def find_targets(model: nn.Module) -> dict[str, TargetModule]:
    """The model's projections LoRA may apply to, by module path."""
    targets: dict[str, TargetModule] = {}
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] not in _WRAPPED_LEAVES:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        offsets: dict[str, tuple[int, int]] | None = getattr(module, "shard_offsets", None)
        if offsets:
            shards = tuple(
                (name, size) for name, (_, size) in sorted(offsets.items(), key=lambda i: i[1][0])
            )
        else:
            shards = (("", int(weight.shape[0])),)
        targets[path] = TargetModule(in_features=int(weight.shape[1]), shards=shards)
    return targets


@attrs.frozen
class LoRAAdapter:
    """An adapter's weights in host memory, mapped onto the base model's modules.

    Attributes:
        request: The request that named it.
        rank: The largest rank of its modules.
        weights: module path -> shard name -> (A ``[r, in_features]``, B
            ``[shard_out, r]`` with the scaling folded in), in the model's dtype.
    """

    request: LoRARequest
    rank: int
    weights: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size()
            for shards in self.weights.values()
            for a, b in shards.values()
        )


def _bad(request: LoRARequest, problem: str) -> ValueError:
    return ValueError(f"LoRA adapter {request.lora_name!r} ({request.lora_path}): {problem}")


def _read_config(request: LoRARequest, folder: pathlib.Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise _bad(request, f"missing {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _bad(request, f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise _bad(request, f"{CONFIG_FILE} must hold a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _bad(request, f"peft_type {peft_type!r} is not LoRA")
    for option, what in _UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise _bad(request, f"{what} is not supported")
    if config.get("bias", "none") != "none":
        raise _bad(request, f"bias={config['bias']!r} is not supported (only 'none')")
    return config


def _read_tensors(request: LoRARequest, folder: pathlib.Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _bad(request, f"cannot read {name}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise _bad(request, f"{name} does not hold a state dict")
        return loaded
    raise _bad(request, f"missing weights: neither {' nor '.join(WEIGHT_FILES)}")


def _check_target_names(
    request: LoRARequest, config: dict[str, Any], targets: dict[str, TargetModule]
) -> None:
    names = config.get("target_modules")
    if not isinstance(names, list):
        return  # a regex (or None): the weights themselves say which modules
    present = {path.rsplit(".", 1)[-1] for path in targets}
    for name in names:
        leaf = str(name).rsplit(".", 1)[-1]
        if leaf not in SUPPORTED_TARGETS:
            raise _bad(
                request,
                f"unknown target module {name!r}: LoRA applies to {', '.join(SUPPORTED_TARGETS)}",
            )
        corral_leaf = FUSED_TARGETS[leaf][0] if leaf in FUSED_TARGETS else leaf
        if corral_leaf not in present:
            raise _bad(
                request,
                f"target module {name!r} does not exist in the base model: the adapter was "
                "trained for another base architecture",
            )


def load_adapter(
    request: LoRARequest,
    targets: dict[str, TargetModule],
    *,
    max_rank: int,
    dtype: torch.dtype,
) -> LoRAAdapter:
    """Read and check a PEFT adapter folder (blocking: call it in a worker thread).

    Args:
        request: Names the folder.
        targets: The base model's projections (`find_targets`).
        max_rank: Largest rank accepted (``max_lora_rank``).
        dtype: The model's dtype; the weights are converted to it.

    Raises:
        ValueError: missing files, an unsupported PEFT option, a rank above
            ``max_rank``, an unknown target module, a module or shape that does not
            match the base model (another architecture or size).
    """
    folder = pathlib.Path(request.lora_path)
    if not folder.is_dir():
        raise _bad(request, "lora_path is not a folder")
    config = _read_config(request, folder)
    _check_target_names(request, config, targets)
    config_rank = config.get("r")
    if not isinstance(config_rank, int) or config_rank < 1:
        raise _bad(request, f"r must be a positive integer, got {config_rank!r}")
    if config_rank > max_rank:
        raise _bad(request, f"rank {config_rank} exceeds max_lora_rank={max_rank}")
    alpha = float(config.get("lora_alpha", 8))
    use_rslora = bool(config.get("use_rslora", False))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(request, folder).items():
        match = _KEY.match(key)
        if match is None:
            raise _bad(request, f"unexpected tensor {key!r} (only lora_A / lora_B weights)")
        pairs.setdefault(match["path"], {})[match["ab"]] = tensor
    if not pairs:
        raise _bad(request, "the weights file holds no LoRA tensors")
    weights: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    rank = 0
    for hf_path, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise _bad(request, f"module {hf_path!r} has lora_{''.join(ab)} but not both A and B")
        parent, _, leaf = hf_path.rpartition(".")
        if leaf not in SUPPORTED_TARGETS:
            raise _bad(
                request,
                f"unknown target module {leaf!r} ({hf_path}): LoRA applies to "
                f"{', '.join(SUPPORTED_TARGETS)}",
            )
        fused, shard = FUSED_TARGETS.get(leaf, (leaf, ""))
        path = f"{parent}.{fused}" if parent else fused
        target = targets.get(path)
        if target is None:
            raise _bad(
                request,
                f"module {hf_path!r} does not exist in the base model: the adapter was "
                "trained for another base architecture",
            )
        a, b = ab["A"], ab["B"]
        r = int(a.shape[0]) if a.dim() == 2 else -1
        if r > max_rank:
            raise _bad(request, f"module {hf_path!r} has rank {r}, above max_lora_rank={max_rank}")
        shard_out = dict(target.shards)[shard]
        if a.shape != (r, target.in_features) or b.shape != (shard_out, r):
            raise _bad(
                request,
                f"module {hf_path!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do "
                f"not match the base model's {target.in_features} inputs and {shard_out} "
                "outputs (shape mismatch: another model size?)",
            )
        scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        weights.setdefault(path, {})[shard] = (
            a.to(dtype).contiguous(),
            (b.float() * scaling).to(dtype).contiguous(),
        )
        rank = max(rank, r)
    return LoRAAdapter(request=request, rank=rank, weights=weights)
