"""Loading a Hugging Face model folder into one of corral's model classes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from corral.errors import NotSupportedError
from corral.model.config import (
    ModelConfig,
    auto_cpu_dtype,
    cpu_has_fast_bfloat16,
    hf_head_size,
    hf_max_positions,
    hf_num_kv_heads,
)
from corral.model.head_sizes import check_head_size
from corral.model.layers.linear import Linear
from corral.model.layers.parallel import VocabParallelEmbedding, split_heads
from corral.model.models.registry import resolve_architecture
from corral.model.parallel_state import SINGLE, TensorParallelGroup
from corral.model.weights import init_dummy_weights, iterate_checkpoint

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}
LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy")


def resolve_model_path(model: str, revision: str | None = None) -> str:
    """The local folder of ``model``: the path itself, or its snapshot in the HF cache.

    No network is used: a model id that is not in the local Hugging Face cache is an error.

    Raises:
        ValueError: when ``model`` is neither a folder nor cached.
    """
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(model, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError) as exc:
        raise ValueError(
            f"model: {model!r} is not a local folder and is not in the local Hugging Face "
            "cache (corral does not download models)"
        ) from exc


def resolve_dtype(dtype: str | torch.dtype, hf_config: Any, device: str) -> torch.dtype:
    """The compute dtype for ``dtype`` ("auto" follows the checkpoint).

    On CPU, "auto" runs bfloat16 where the CPU has hardware bfloat16 (AVX512-BF16 or
    AMX), float32 checkpoints included, and otherwise turns only float16 checkpoints
    into bfloat16 (see `corral.model.config.auto_cpu_dtype`).

    Raises:
        ValueError: for an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    elif dtype == "auto":
        config_dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(config_dtype, str):
            config_dtype = _DTYPES.get(config_dtype, torch.float32)
        chosen = config_dtype if isinstance(config_dtype, torch.dtype) else torch.float32
        if torch.device(device).type == "cpu" and chosen.is_floating_point:
            chosen = auto_cpu_dtype(chosen)
    elif dtype in _DTYPES:
        chosen = _DTYPES[dtype]
    else:
        raise ValueError(f"dtype: {dtype!r} is not one of 'auto', {sorted(_DTYPES)}")
    if chosen not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: {chosen} is not a supported compute dtype")
    return chosen


KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def resolve_kv_cache_dtype(kv_cache_dtype: str, device: str) -> torch.dtype | None:
    """The KV cache's own dtype for ``kv_cache_dtype`` (None: the model's dtype).

    Raises:
        ValueError: for an unknown name.
        NotSupportedError: a float8 cache on a device other than the CPU.
    """
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype: {kv_cache_dtype!r} is not one of {sorted(KV_CACHE_DTYPES)}"
        )
    chosen = KV_CACHE_DTYPES[kv_cache_dtype]
    if chosen is not None and torch.device(device).type != "cpu":
        raise NotSupportedError(
            f"kv_cache_dtype={kv_cache_dtype!r}: float8 KV caches have CPU kernels only; "
            "the CUDA attention kernels read caches in the model's dtype"
        )
    return chosen


def prepack_linear_weights(module: nn.Module) -> int:
    """Pack every linear weight of ``module`` for oneDNN, where that is faster.

    Done for bfloat16 on a CPU with hardware bfloat16 (AVX512-BF16 or AMX), where
    oneDNN's packed bfloat16 GEMM was measured 1.2x to 1.7x faster than ``F.linear`` at
    decode row counts (docs/kernels.md); elsewhere nothing changes. Packed layers
    release their plain weight (`Linear.prepack`); the embedding that computes the
    logits keeps its own and packs a copy on its first use.

    Returns:
        How many linear layers were packed.
    """
    if not (torch.backends.mkldnn.is_available() and cpu_has_fast_bfloat16()):
        return 0
    count = 0
    for layer in module.modules():
        if isinstance(layer, Linear):
            layer.prepack()
            count += 1
        elif isinstance(layer, VocabParallelEmbedding):
            layer.pack_for_logits = True
    logger.info("packed %d linear layers for oneDNN's bfloat16 GEMM", count)
    return count


def _eos_token_ids(folder: str, hf_config: Any) -> tuple[int, ...]:
    ids: list[int] = []
    sources: list[Any] = [getattr(hf_config, "eos_token_id", None)]
    if os.path.isfile(os.path.join(folder, "generation_config.json")):
        from transformers import GenerationConfig

        sources.append(GenerationConfig.from_pretrained(folder).eos_token_id)
    for source in sources:
        for token in source if isinstance(source, list) else [source]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return tuple(ids)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Parameters are created directly in the target dtype (no float32 copy of a large
    # model first). The default dtype is process-wide, so a tensor another thread
    # creates without a dtype during loading would get it too; corral creates none.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_model(
    model: str,
    *,
    dtype: str | torch.dtype = "auto",
    kv_cache_dtype: str = "auto",
    load_format: str = "auto",
    max_model_len: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    revision: str | None = None,
    tp: TensorParallelGroup = SINGLE,
) -> tuple[nn.Module, ModelConfig]:
    """Build the model for a local HF folder (or cached model id) and load its weights.

    Args:
        model: Folder path or Hugging Face model id (resolved offline).
        dtype: "auto", "float32", "bfloat16", "float16" or a torch dtype.
        kv_cache_dtype: "auto" (the KV cache in ``dtype``), "fp8" / "fp8_e4m3" or
            "fp8_e5m2" (CPU only); see `resolve_kv_cache_dtype`.
        load_format: "auto"/"safetensors"/"pt" read the checkpoint; "dummy" draws
            random weights from ``seed`` (benchmarks).
        max_model_len: Longest context; defaults to the model's maximum.
        device: Where the weights live ("cpu" or "cuda").
        seed: Seed of the dummy weights.
        revision: HF cache revision of a model id.
        tp: The tensor-parallel group: the model built is this rank's shard, and only
            this rank's slices of the checkpoint are read. Dummy weights are drawn per
            shard, so they differ between tensor-parallel sizes.

    Returns:
        The model in inference mode and its `ModelConfig` (``num_kv_heads`` counts the
        heads of this rank's KV cache).

    Raises:
        ValueError: for bad arguments, unsupported architectures, a head size the
            attention kernels of ``device`` cannot run, or bad checkpoints.
    """
    from transformers import AutoConfig

    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format: {load_format!r} is not one of {LOAD_FORMATS}")
    folder = resolve_model_path(model, revision)
    hf_config = AutoConfig.from_pretrained(folder)
    architecture, model_class = resolve_architecture(hf_config)
    model_max = hf_max_positions(hf_config)
    if max_model_len is None:
        max_model_len = model_max
    elif max_model_len <= 0 or max_model_len > model_max:
        raise ValueError(f"max_model_len: {max_model_len} is not in 1..{model_max} for this model")
    head_size = hf_head_size(hf_config)
    # Before any weight is built: the kernels would otherwise fail at the first step.
    check_head_size(head_size, device, architecture)
    torch_dtype = resolve_dtype(dtype, hf_config, device)
    cache_dtype = resolve_kv_cache_dtype(kv_cache_dtype, device)
    with _default_dtype(torch_dtype), torch.device(device):
        module = model_class(architecture, hf_config, max_model_len, tp)
    if load_format == "dummy":
        init_dummy_weights(module, seed)
    else:
        module.load_weights(iterate_checkpoint(folder))  # type: ignore[operator]
    module.eval().requires_grad_(False)
    if torch_dtype == torch.bfloat16 and torch.device(device).type == "cpu":
        prepack_linear_weights(module)
    config = ModelConfig(
        path=folder,
        architecture=architecture,
        hf_config=hf_config,
        dtype=torch_dtype,
        vocab_size=int(hf_config.vocab_size),
        num_layers=int(getattr(hf_config, "num_hidden_layers", None) or hf_config.n_layer),
        num_kv_heads=split_heads(
            int(hf_config.num_attention_heads), hf_num_kv_heads(hf_config), tp
        ).num_kv_heads,
        head_size=head_size,
        max_model_len=max_model_len,
        eos_token_ids=_eos_token_ids(folder, hf_config),
        kv_cache_dtype=cache_dtype,
    )
    logger.info(
        "loaded %s from %s (%s, %.1fM parameters)",
        architecture,
        folder,
        torch_dtype,
        sum(p.numel() for p in module.parameters()) / 1e6,
    )
    return module, config
