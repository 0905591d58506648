"""The composition root: `build_engine_core` wires a model, a tokenizer and a cache
into an `EngineCore`.

It sits above both `corral.core` and `corral.model` (the only module that knows
both), so that the core stays free of torch and the model free of scheduling.
The front doors (`open_engine`, `LLM`) call it; it does blocking work.
"""

from __future__ import annotations

from typing import Any

import attrs

from corral.config import EngineArgs
from corral.core.engine_core import EngineCore
from corral.lora.manager import LoRAManager
from corral.model.config import ModelConfig
from corral.model.factory import num_device_blocks, resolve_device
from corral.model.kv_cache import PagedKVCache, blocks_for_memory
from corral.model.loader import load_model, resolve_model_path
from corral.model.parallel_state import SINGLE
from corral.model.runner import TorchModelRunner
from corral.model.sampler import Sampler
from corral.model.structured import StructuredOutputs
from corral.tokenization import Detokenizer, load_tokenizer


def build_engine_core(args: EngineArgs) -> tuple[EngineCore, Any, ModelConfig]:
    """Load the model and tokenizer of ``args`` and assemble an `EngineCore` over them.

    This is blocking work (seconds to minutes); the async engine runs it in a worker thread.

    Returns:
        The engine core, the Hugging Face tokenizer and the model's `ModelConfig`.

    Raises:
        ValueError: for a model, tokenizer or configuration that cannot be served.
    """
    device = resolve_device(args.device)
    workers = None
    if args.tensor_parallel_size > 1:
        from corral.distributed.tp_executor import start_workers

        workers = start_workers(args, device)
    model, model_config = load_model(
        args.model,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        device=str(device),
        seed=args.seed,
        tp=workers.group if workers is not None else SINGLE,
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
    core_config = attrs.evolve(
        args.core_config(
            num_kv_blocks=num_blocks,
            num_host_blocks=num_host_blocks,
            max_model_len=model_config.max_model_len,
        ),
        vocab_size=model_config.vocab_size,
    )
    kv_cache = PagedKVCache(model_config, args.block_size, num_blocks, num_host_blocks, device)
    sampler = Sampler(eos_token_ids, args.seed, device)
    structured_outputs = StructuredOutputs(tokenizer, model_config.vocab_size, eos_token_ids)
    lora_manager = None
    if args.enable_lora:
        lora_manager = LoRAManager(
            model, args.max_loras, args.max_lora_rank, args.max_cpu_loras or args.max_loras
        )
    runner = (workers.runner if workers is not None else TorchModelRunner)(
        model, model_config, kv_cache, sampler, structured_outputs, lora_manager=lora_manager
    )
    core = EngineCore(
        core_config, runner, eos_token_ids=eos_token_ids, detokenizer=Detokenizer(tokenizer)
    )
    return core, tokenizer, model_config
