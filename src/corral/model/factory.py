"""Sizing the model side of an engine: the device and the number of KV cache blocks."""

from __future__ import annotations

import os

import torch

from corral.config import EngineArgs
from corral.model.config import ModelConfig
from corral.model.kv_cache import blocks_for_memory

# Without an explicit size the KV cache takes this share of the memory that is free
# when the engine starts: room for activations and the rest of the process remains.
_FREE_MEMORY_FRACTION = 0.4


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU.

    Raises:
        ValueError: for "cuda" on a machine without CUDA.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(device)


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def num_device_blocks(args: EngineArgs, model_config: ModelConfig, device: torch.device) -> int:
    """Device KV blocks: ``num_kv_blocks``, else what ``kv_cache_memory`` holds, else a
    share of free memory capped at what ``max_num_seqs`` full-length sequences need."""
    if args.num_kv_blocks is not None:
        return args.num_kv_blocks
    if args.kv_cache_memory is not None:
        return blocks_for_memory(model_config, args.block_size, args.kv_cache_memory)
    fit = blocks_for_memory(
        model_config, args.block_size, int(_free_memory(device) * _FREE_MEMORY_FRACTION)
    )
    blocks_per_seq = -(-model_config.max_model_len // args.block_size)
    return min(fit, args.max_num_seqs * blocks_per_seq)
