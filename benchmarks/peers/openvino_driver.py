"""The OpenVINO GenAI peer of benchmarks/throughput.py: ``ContinuousBatchingPipeline``.

Runs in the OpenVINO peer's venv (benchmarks/peers/setup_openvino.sh), on a model
that ``optimum-cli export openvino --task text-generation-with-past`` exported from
the benchmark's checkpoint. The prompts go in as the benchmark's token ids
(``ov.Tensor``s, no tokenizer), greedy, ``ignore_eos``, each request asking for
exactly ``output_len`` tokens. ``precision`` "default" leaves the CPU plugin's
choice (bf16 compute and f16 KV on CPUs with native bf16, f32 otherwise); "f32"
asks for f32 compute and an f32 KV cache. What the plugin reports is recorded.

    python openvino_driver.py SPEC.json     (prints one JSON object)

SPEC: {"model_dir": path, "prompts": [[ids]], "warmup": [[ids]], "output_len": n,
"threads": n, "max_num_batched_tokens": n, "max_num_seqs": n, "precision": "default"|"f32"}
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai


def kv_cache_gib(model_dir: str, prompts: list[list[int]], output_len: int) -> int:
    """Whole GiB of KV cache holding every request at once, at 4 bytes a value."""
    with open(f"{model_dir}/config.json") as f:
        config = json.load(f)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    per_token = 2 * config["num_hidden_layers"] * kv_heads * head_dim * 4
    tokens = sum(len(p) + output_len for p in prompts)
    return max(1, math.ceil(1.25 * tokens * per_token / 2**30))


def main(spec_path: str) -> dict[str, Any]:
    with open(spec_path) as f:
        spec = json.load(f)
    prompts: list[list[int]] = spec["prompts"]
    output_len = int(spec["output_len"])
    precision = spec["precision"]
    properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(spec["threads"])}
    if precision == "f32":
        properties["INFERENCE_PRECISION_HINT"] = "f32"
        properties["KV_CACHE_PRECISION"] = "f32"
    elif precision != "default":
        raise ValueError(f"precision: {precision!r} is not 'default' or 'f32'")

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = kv_cache_gib(spec["model_dir"], prompts, output_len)
    scheduler.max_num_batched_tokens = int(spec["max_num_batched_tokens"])
    scheduler.max_num_seqs = int(spec["max_num_seqs"])
    scheduler.dynamic_split_fuse = True
    # corral's prefix cache never hits on these prompts (random ids); off here too.
    scheduler.enable_prefix_caching = False
    pipe = ov_genai.ContinuousBatchingPipeline(spec["model_dir"], scheduler, "CPU", properties)

    config = ov_genai.GenerationConfig()
    config.max_new_tokens = output_len
    config.min_new_tokens = output_len
    config.ignore_eos = True
    config.do_sample = False

    def generate(batch: list[list[int]]) -> int:
        ids = [ov.Tensor(np.array([p], dtype=np.int64)) for p in batch]
        results = pipe.generate(ids, [config] * len(batch))
        return sum(len(r.m_generation_ids[0]) for r in results)

    generate(spec["warmup"])
    start = time.perf_counter()
    generated = generate(prompts)
    elapsed = time.perf_counter() - start
    expected = len(prompts) * output_len
    if generated != expected:
        raise RuntimeError(f"generated {generated} tokens, expected {expected}")
    core = ov.Core()
    return {
        "elapsed_s": elapsed,
        "output_tokens": generated,
        "config": {
            "driver": "openvino_genai.ContinuousBatchingPipeline on token ids (ov.Tensor)",
            "openvino": ov.__version__,
            "openvino_genai": ov_genai.__version__,
            "precision_asked": precision,
            "properties": {k: str(v) for k, v in properties.items()},
            # The plugin's defaults on this CPU: what "default" resolves to.
            "cpu_default_inference_precision": str(
                core.get_property("CPU", "INFERENCE_PRECISION_HINT")
            ),
            "cpu_default_kv_cache_precision": str(core.get_property("CPU", "KV_CACHE_PRECISION")),
            "cpu_capabilities": [
                str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            ],
            "cache_size_gib": scheduler.cache_size,
            "max_num_batched_tokens": scheduler.max_num_batched_tokens,
            "max_num_seqs": scheduler.max_num_seqs,
            "threads": int(spec["threads"]),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
