"""Offline multi-LoRA throughput of `corral.LLM`: base only, one adapter, eight adapters.

The issue-7 workload (benchmarks/throughput.py: a float32 Llama with vocab 32000,
hidden 512, intermediate 1408, 8 layers, 8 heads, 4 KV heads, random weights; 128
requests with prompts of 32..512 tokens, 128 output tokens each with ``ignore_eos``)
run three ways in the same process:

- ``base``: an engine without LoRA;
- ``one_adapter``: an engine with ``enable_lora`` (``max_loras=8``, rank 16), every
  request on the same adapter;
- ``eight_adapters``: the same engine, request ``i`` on adapter ``i % 8``.

Each adapter is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``)
of rank 16 on every projection (q, k, v, o, gate, up, down) with random weights,
written by this script. Wall time covers the generate call only (each system does a
short warm-up first); the systems run ``--rounds`` times in rotation and each reports
its median round. The target of issue 15: ``eight_adapters`` at least 80% of
``base`` tokens/s. Prints one JSON object (and writes it to ``--out``).

    python benchmarks/lora.py [--tiny] [--requests N] [--output-len N] [--threads N] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import STANDARD_MODEL, TINY_MODEL, build_model, workload

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_MIXED_OVER_BASE = 0.8


def write_adapter(folder: Path, shape: dict[str, int], rank: int, seed: int) -> Path:
    """A PEFT LoRA folder of ``rank`` on every projection of a Llama of ``shape``."""
    from safetensors.torch import save_file

    hidden = shape["hidden_size"]
    head = hidden // shape["num_attention_heads"]
    sizes = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, shape["num_key_value_heads"] * head),
        "v_proj": (hidden, shape["num_key_value_heads"] * head),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, shape["intermediate_size"]),
        "up_proj": (hidden, shape["intermediate_size"]),
        "down_proj": (shape["intermediate_size"], hidden),
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(shape["num_hidden_layers"]):
        for name, (fan_in, fan_out) in sizes.items():
            module = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{module}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
            )
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(PROJECTIONS),
        "bias": "none",
        "use_rslora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def timed_generate(
    llm: Any, prompts: list[list[int]], loras: list[Any] | None, output_len: int
) -> dict[str, Any]:
    from corral import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    warm = [p[:16] for p in prompts[:4]]
    llm.generate(
        prompt_token_ids=warm,
        sampling_params=SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
        use_tqdm=False,
        lora_request=None if loras is None else loras[:4],
    )
    start = time.perf_counter()
    outputs = llm.generate(
        prompt_token_ids=prompts, sampling_params=params, use_tqdm=False, lora_request=loras
    )
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(map(len, prompts))
    return {
        "seconds": round(elapsed, 3),
        "generated_tokens": generated,
        "output_tokens_per_s": round(generated / elapsed, 1),
        "total_tokens_per_s": round((generated + prompt_tokens) / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--min-prompt", type=int, default=32)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each system, rotated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from corral import LLM, LoRARequest

    shape = TINY_MODEL if args.tiny else STANDARD_MODEL
    result: dict[str, Any] = {
        "benchmark": "lora",
        "model": {**shape, "dtype": "float32"},
        "workload": {
            "requests": args.requests,
            "prompt_len": [args.min_prompt, args.max_prompt],
            "output_len": args.output_len,
            "adapters": args.adapters,
            "rank": args.rank,
            "targets": list(PROJECTIONS),
            "rounds": args.rounds,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_model(root / "model", shape, args.seed)
        prompts = workload(
            args.requests, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed
        )
        loras = [
            LoRARequest(
                f"adapter{i}", i + 1, str(write_adapter(root / f"a{i}", shape, args.rank, i))
            )
            for i in range(args.adapters)
        ]
        common = {"dtype": "float32", "max_model_len": 1024}
        base = LLM(str(root / "model"), **common)
        lora_llm = LLM(
            str(root / "model"),
            enable_lora=True,
            max_loras=args.adapters,
            max_lora_rank=args.rank,
            **common,
        )
        plans: dict[str, tuple[Any, list[Any] | None]] = {
            "base": (base, None),
            "one_adapter": (lora_llm, [loras[0]] * len(prompts)),
            "eight_adapters": (lora_llm, [loras[i % len(loras)] for i in range(len(prompts))]),
        }
        # Rounds in rotation, so that a change of the machine's load during the run
        # hits every system alike; each system reports its median round.
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plans}
        for _ in range(args.rounds):
            for name, (llm, plan) in plans.items():
                runs[name].append(timed_generate(llm, prompts, plan, args.output_len))
        systems: dict[str, Any] = {}
        for name, rounds in runs.items():
            ordered = sorted(rounds, key=lambda r: r["output_tokens_per_s"])
            systems[name] = {
                **ordered[len(ordered) // 2],
                "rounds_output_tokens_per_s": [r["output_tokens_per_s"] for r in rounds],
            }
    base_rate = systems["base"]["output_tokens_per_s"]
    ratios = {
        name: round(s["output_tokens_per_s"] / base_rate, 3)
        for name, s in systems.items()
        if name != "base"
    }
    result["systems"] = systems
    result["over_base"] = ratios
    result["target"] = {
        "eight_adapters_over_base": TARGET_MIXED_OVER_BASE,
        "met": ratios["eight_adapters"] >= TARGET_MIXED_OVER_BASE,
    }
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
