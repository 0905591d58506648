"""Offline throughput of `corral.LLM` against transformers' static-batch generate.

A ~40M-parameter Llama (vocab 32000, hidden 512, intermediate 1408, 8 layers, 8
heads, 4 KV heads, float32) with random weights drawn from a fixed seed is saved
once, with a word-level tokenizer covering its whole vocabulary, and both engines
load the same folder. The workload is seeded: prompt lengths drawn from 32..512,
128 output tokens per request with ``ignore_eos`` (transformers: EOS disabled), so
both produce exactly the same number of tokens. Wall time is measured around the
generate calls only (model loading excluded; one short warm-up run first). Prints
JSON.

    python benchmarks/throughput.py [--quick] [--no-peer] [--threads N] [--requests N] [--output-len N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

VOCAB_SIZE = 32000
EOS_ID = 1


def build_model(folder: Path, seed: int) -> Any:
    """Save the benchmark Llama (random weights from ``seed``) and its tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models

    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=EOS_ID,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2} | {f"w{i}": i for i in range(3, VOCAB_SIZE)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    return model


def workload(num_requests: int, seed: int) -> list[list[int]]:
    """Seeded prompts with lengths drawn from 32..512."""
    rng = random.Random(seed)
    return [
        [rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randint(32, 512))]
        for _ in range(num_requests)
    ]


def run_corral(folder: Path, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    from corral.llm import LLM
    from corral.sampling_params import SamplingParams

    llm = LLM(str(folder), dtype="float32", max_model_len=1024, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompt_token_ids=prompts[:2], sampling_params=params, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return _rates(elapsed, sum(map(len, prompts)), generated)


def run_transformers(
    model: Any, prompts: list[list[int]], output_len: int, batch_size: int
) -> dict[str, Any]:
    """Static batches of ``batch_size`` left-padded prompts, each run to ``output_len``."""
    model.generation_config.eos_token_id = None

    def generate(batch: list[list[int]]) -> int:
        longest = max(map(len, batch))
        ids = torch.tensor([[2] * (longest - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                pad_token_id=2,
            )
        return int(out.shape[0] * (out.shape[1] - longest))

    generate(prompts[:2])
    start = time.perf_counter()
    generated = sum(
        generate(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)
    )
    elapsed = time.perf_counter() - start
    return {**_rates(elapsed, sum(map(len, prompts)), generated), "batch_size": batch_size}


def _rates(elapsed: float, prompt_tokens: int, generated: int) -> dict[str, Any]:
    return {
        "elapsed_s": round(elapsed, 3),
        "output_tokens": generated,
        "output_tokens_per_s": round(generated / elapsed, 1),
        "total_tokens_per_s": round((prompt_tokens + generated) / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 requests, 32 output tokens")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--peer-batch-size", type=int, default=32)
    parser.add_argument("--no-peer", action="store_true", help="skip transformers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.requests, args.output_len = 16, 32
    prompts = workload(args.requests, args.seed)
    result: dict[str, Any] = {
        "benchmark": "offline_throughput",
        "model": "llama-40M (vocab 32000, hidden 512, 8 layers, 8 heads, 4 kv heads)",
        "dtype": "float32",
        "requests": args.requests,
        "prompt_tokens": sum(map(len, prompts)),
        "output_len": args.output_len,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf_model = build_model(folder, args.seed)
        result["corral"] = run_corral(folder, prompts, args.output_len)
        if not args.no_peer:
            result["transformers"] = run_transformers(
                hf_model, prompts, args.output_len, args.peer_batch_size
            )
            result["speedup"] = round(
                result["corral"]["output_tokens_per_s"]
                / result["transformers"]["output_tokens_per_s"],
                2,
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
