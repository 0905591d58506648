"""Building a ready-to-step `EngineCore` from `EngineArgs`: model, tokenizer, cache, runner."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from corral.config import EngineArgs
from corral.core.engine_core import EngineCore
from corral.model.config import ModelConfig
from corral.model.kv_cache import PagedKVCache, blocks_for_memory
from corral.model.loader import load_model, resolve_model_path
from corral.model.runner import TorchModelRunner
from corral.model.sampler import Sampler
from corral.tokenization import Detokenizer, load_tokenizer

logger = logging.getLogger(__name__)

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


def build_engine_core(args: EngineArgs) -> tuple[EngineCore, Any, ModelConfig]:
    """Load the model and tokenizer of ``args`` and assemble an `EngineCore` over them.

    This is blocking work (seconds to minutes); the async engine runs it in a worker thread.

    Returns:
        The engine core, the Hugging Face tokenizer and the model's `ModelConfig`.

    Raises:
        ValueError: for a model, tokenizer or configuration that cannot be served.
    """
    device = resolve_device(args.device)
    model, model_config = load_model(
        args.model,
        dtype=args.dtype,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        device=str(device),
        seed=args.seed,
    )
    tokenizer = load_tokenizer(
        resolve_model_path(args.tokenizer or args.model),
        trust_remote_code=args.trust_remote_code,
    )
    eos_token_ids = list(model_config.eos_token_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_token_ids:
        eos_token_ids.append(int(tokenizer.eos_token_id))
    num_blocks = num_device_blocks(args, model_config, device)
    # Host blocks only matter to swap preemption; recompute never touches them.
    num_host_blocks = 0
    if args.preemption_mode == "swap":
        num_host_blocks = blocks_for_memory(
            model_config, args.block_size, int(args.swap_space * 2**30)
        )
    core_config = args.core_config(
        num_kv_blocks=num_blocks,
        num_host_blocks=num_host_blocks,
        max_model_len=model_config.max_model_len,
    )
    kv_cache = PagedKVCache(model_config, args.block_size, num_blocks, num_host_blocks, device)
    sampler = Sampler(eos_token_ids, args.seed, device)
    runner = TorchModelRunner(model, model_config, kv_cache, sampler)
    core = EngineCore(
        core_config, runner, eos_token_ids=eos_token_ids, detokenizer=Detokenizer(tokenizer)
    )
    return core, tokenizer, model_config
