"""Offline throughput with half of the requests under a JSON schema, against none.

The issue-7 workload (benchmarks/throughput.py: the same Llama shape, random weights
from a fixed seed, seeded prompt lengths) served by one `corral.LLM` in this process,
twice over the same prompts: ``plain`` (no request structured) and ``half_json``
(every other request under a JSON schema). Greedy; every request may generate up to
``--output-len`` tokens. Plain requests ignore EOS (exactly ``output-len`` tokens, as
in issue 7); structured requests end when their JSON is complete, so the runs
produce different token counts: the measure is generated tokens per second of wall
time over the ``generate`` call. The runs alternate (plain, half_json, plain,
half_json, ...) so that both see the same machine load.

The throughput benchmark's word-level tokenizer has no JSON characters; here the
first ids of the vocabulary are replaced by the printable ASCII characters, so that
a schema's JSON can be written with the model's tokens.

Also measured: grammar compile time cold (a fresh compiler, including xgrammar's
tokenizer preparation, and a schema seen for the first time) and cached.

Prints one JSON object (and writes it to ``--out``).

    python benchmarks/structured.py [--tiny] [--requests N] [--output-len N] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput import (
    BLOCK_SIZE,
    EOS_ID,
    FIRST_WORD_ID,
    PAD_ID,
    STANDARD_MODEL,
    TINY_MODEL,
    build_model,
    machine_info,
    versions,
    workload,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 100000},
        "name": {"type": "string", "maxLength": 24},
        "tags": {"type": "array", "items": {"enum": ["alpha", "beta", "gamma"]}, "maxItems": 4},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
    },
    "required": ["id", "name", "tags", "active"],
}
CHARACTERS = [chr(c) for c in range(32, 127)]


def json_capable_tokenizer(folder: Path, vocab_size: int) -> None:
    """Replace the saved word-level tokenizer: printable ASCII first, then words."""
    import transformers
    from tokenizers import Tokenizer, decoders, models

    chars = {c: FIRST_WORD_ID + i for i, c in enumerate(CHARACTERS)}
    words = {f"w{i}": i for i in range(FIRST_WORD_ID + len(CHARACTERS), vocab_size)}
    vocab = {"<s>": 0, "</s>": EOS_ID, "<pad>": PAD_ID} | chars | words
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    # Tokens are pieces of text: decoding concatenates them.
    tokenizer.decoder = decoders.Fuse()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)


def compile_times(llm: Any, repeats: int) -> dict[str, Any]:
    from corral.model.structured import StructuredOutputs
    from corral.structured_outputs import StructuredOutputsParams

    runner = llm.engine_core.runner
    existing = runner.structured_outputs
    fresh = StructuredOutputs(existing.tokenizer, existing.vocab_size, existing.eos_token_ids)
    spec = StructuredOutputsParams(json=SCHEMA)
    start = time.perf_counter()
    fresh.compile(spec)
    cold_with_tokenizer = time.perf_counter() - start
    colds, cached = [], []
    for i in range(repeats):
        other = StructuredOutputsParams(json={**SCHEMA, "title": f"variant {i}"})
        start = time.perf_counter()
        fresh.compile(other)
        colds.append(time.perf_counter() - start)
        start = time.perf_counter()
        fresh.compile(StructuredOutputsParams(json={**SCHEMA, "title": f"variant {i}"}))
        cached.append(time.perf_counter() - start)
    return {
        "cold_first_s": round(cold_with_tokenizer, 5),
        "cold_median_s": round(statistics.median(colds), 5),
        "cached_median_s": round(statistics.median(cached), 7),
    }


def run(llm: Any, prompts: list[list[int]], output_len: int, structured: bool) -> dict[str, Any]:
    from corral.sampling_params import SamplingParams
    from corral.structured_outputs import StructuredOutputsParams

    plain = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    json_params = SamplingParams(
        temperature=0.0,
        max_tokens=output_len,
        structured_outputs=StructuredOutputsParams(json=SCHEMA),
    )
    params = [json_params if structured and i % 2 else plain for i in range(len(prompts))]
    start = time.perf_counter()
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    parsed = finished = 0
    for i, output in enumerate(outputs):
        if structured and i % 2 and output.outputs[0].finish_reason == "stop":
            finished += 1
            json.loads(output.outputs[0].text)
            parsed += 1
    return {
        "seconds": round(elapsed, 3),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / elapsed, 2),
        "structured_finished": finished,
        "structured_parsed": parsed,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a toy model (smoke tests)")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--min-prompt", type=int, default=32)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = TINY_MODEL if args.tiny else STANDARD_MODEL
    prompts = workload(
        args.requests, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed
    )
    result: dict[str, Any] = {
        "benchmark": "structured_outputs_throughput",
        "command": " ".join(["structured.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": {
            "model": "tiny llama" if args.tiny else "llama-40M",
            "requests": args.requests,
            "output_len": args.output_len,
            "prompt_len": f"{args.min_prompt}..{args.max_prompt}",
            "schema": SCHEMA,
            "torch_threads": torch.get_num_threads(),
        },
        "machine": machine_info(),
        "versions": versions(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    from corral.llm import LLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_model(folder, shape, args.seed)
        json_capable_tokenizer(folder, shape["vocab_size"])
        llm = LLM(str(folder), dtype="float32", max_model_len=1024, seed=0, block_size=BLOCK_SIZE)
        result["compile"] = compile_times(llm, repeats=5)
        # Warm-up (and the schema's grammar compiled, as a server would have it).
        warmup = workload(2, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed + 2)
        run(llm, warmup, 8, structured=True)
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "half_json": []}
        for _ in range(args.rounds):
            runs["plain"].append(run(llm, prompts, args.output_len, structured=False))
            runs["half_json"].append(run(llm, prompts, args.output_len, structured=True))
    result["runs"] = runs
    best = {name: max(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    result["summary"] = {
        "plain_tokens_per_s": best["plain"],
        "half_json_tokens_per_s": best["half_json"],
        "half_json_over_plain": round(best["half_json"] / best["plain"], 4),
        "target": 0.9,
    }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
