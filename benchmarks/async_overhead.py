"""Throughput of the async stack with a zero-cost model: what the front door costs.

N concurrent consumers (default 64) each stream one request of M output tokens
(default 256) through `open_engine_from_core` over a `FakeModelRunner` that does
no work beyond bookkeeping, on asyncio and on trio. Reported: output tokens
delivered to the consumers per second of wall time, and snapshots the consumers
actually read (fewer than tokens when outputs coalesce). The peer, measured in
the same run: the synchronous `EngineCore` stepping the same workload in a plain
loop, which bounds what any front door can deliver.

With ``--real-model``, also the offline workload of benchmarks/throughput.py (its
~40M-parameter random-weight Llama, float32, prompts of 32..512 tokens) run once by
`LLM.generate` and once through the async engine with every request streamed by
its own task, on each backend; the async engine should stay within 5% of
`LLM.generate`. Model loading is outside the timings; each engine gets one
warm-up request first.

Prints one JSON object. Usage::

    python benchmarks/async_overhead.py [--requests 64] [--max-tokens 256] [--repeats 3]
        [--real-model [--model-requests 32] [--model-output-len 64]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import anyio

from corral.core.engine_core import EngineCore
from corral.engine import open_engine_from_core
from corral.sampling_params import SamplingParams
from corral.testing import FakeModelRunner, make_fake_core

PROMPT_LEN = 16
BLOCK_SIZE = 16


def build_core(num_requests: int, max_tokens: int) -> EngineCore:
    blocks_per_request = -(-(PROMPT_LEN + max_tokens) // BLOCK_SIZE)
    num_blocks = num_requests * blocks_per_request + 8
    runner = FakeModelRunner(
        block_size=BLOCK_SIZE, num_kv_blocks=num_blocks, num_host_blocks=0, check_context=False
    )
    return make_fake_core(
        runner,
        detokenizer=None,
        block_size=BLOCK_SIZE,
        num_kv_blocks=num_blocks,
        num_host_blocks=0,
        max_model_len=PROMPT_LEN + max_tokens,
        max_num_seqs=num_requests,
        max_num_batched_tokens=max(num_requests * PROMPT_LEN, 2048),
    )


def prompts(num_requests: int) -> list[list[int]]:
    return [[(i * 7 + j) % 60 + 1 for j in range(PROMPT_LEN)] for i in range(num_requests)]


def params(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


async def run_async(num_requests: int, max_tokens: int) -> dict[str, float]:
    core = build_core(num_requests, max_tokens)
    tokens = [0] * num_requests
    snapshots = [0] * num_requests
    async with open_engine_from_core(core, log_requests=False, log_stats=False) as engine:

        async def consume(i: int, prompt: list[int]) -> None:
            async with engine.generate(None, params(max_tokens), prompt_token_ids=prompt) as s:
                async for out in s:
                    snapshots[i] += 1
                    tokens[i] = len(out.outputs[0].token_ids)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, prompt in enumerate(prompts(num_requests)):
                tg.start_soon(consume, i, prompt)
        elapsed = time.perf_counter() - start
    if sum(tokens) != num_requests * max_tokens:
        raise RuntimeError(f"delivered {sum(tokens)} tokens, expected {num_requests * max_tokens}")
    return {
        "seconds": elapsed,
        "tokens_per_s": sum(tokens) / elapsed,
        "snapshots_read_per_token": sum(snapshots) / sum(tokens),
    }


def run_sync_core(num_requests: int, max_tokens: int) -> dict[str, float]:
    core = build_core(num_requests, max_tokens)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts(num_requests)):
        core.add_request(str(i), prompt, params(max_tokens))
    delivered = 0
    while core.has_unfinished_requests():
        for output in core.step():
            if output.finished:
                delivered += len(output.outputs[0].token_ids)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "tokens_per_s": delivered / elapsed}


def real_model_comparison(num_requests: int, output_len: int) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    import throughput  # benchmarks/throughput.py: the offline benchmark's model and workload
    from corral.engine import open_engine
    from corral.llm import LLM

    prompts = throughput.workload(num_requests, seed=0)
    sampling = params(output_len)
    longest = max(map(len, prompts)) + output_len
    engine_args: dict[str, Any] = {
        "dtype": "float32",
        "max_model_len": 1024,
        "seed": 0,
        # Repeated runs of the same prompts would otherwise be served from the cache.
        "enable_prefix_caching": False,
        "num_kv_blocks": num_requests * -(-longest // BLOCK_SIZE) + 8,
    }
    result: dict[str, Any] = {
        "requests": num_requests,
        "output_len": output_len,
        # With OpenMP's default active waiting, LLM.generate (main thread) ran 3.5x
        # slower than the same call in a worker thread on the loaded 2-core machine;
        # OMP_WAIT_POLICY=PASSIVE removes the difference. Recorded for comparison.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        throughput.build_model(folder, seed=0)
        llm = LLM(str(folder), **engine_args)
        llm.generate(prompt_token_ids=prompts[:1], sampling_params=sampling, use_tqdm=False)

        def run_llm() -> dict[str, float]:
            start = time.perf_counter()
            outputs = llm.generate(
                prompt_token_ids=prompts, sampling_params=sampling, use_tqdm=False
            )
            elapsed = time.perf_counter() - start
            generated = sum(len(o.outputs[0].token_ids) for o in outputs)
            return {"seconds": elapsed, "tokens_per_s": generated / elapsed}

        async def run_engine() -> dict[str, float]:
            async with open_engine(
                model=str(folder), log_requests=False, disable_log_stats=True, **engine_args
            ) as engine:
                async for _ in engine.generate(None, sampling, prompt_token_ids=prompts[0]):
                    pass
                delivered = [0] * num_requests

                async def consume(i: int) -> None:
                    stream = engine.generate(None, sampling, prompt_token_ids=prompts[i])
                    async with stream:
                        async for out in stream:
                            delivered[i] = len(out.outputs[0].token_ids)

                start = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for i in range(num_requests):
                        tg.start_soon(consume, i)
                elapsed = time.perf_counter() - start
            return {"seconds": elapsed, "tokens_per_s": sum(delivered) / elapsed}

        # LLM.generate runs before and after the async runs, so that drift in the
        # machine's load shows up instead of favouring either side.
        llm_runs = [run_llm()]
        for backend in ("asyncio", "trio"):
            result[backend] = anyio.run(run_engine, backend=backend)
        llm_runs.append(run_llm())
        result["llm_generate_runs"] = llm_runs
        reference = max(run["tokens_per_s"] for run in llm_runs)
        for backend in ("asyncio", "trio"):
            result[backend]["fraction_of_best_llm_generate"] = (
                result[backend]["tokens_per_s"] / reference
            )
    return result


def best_of(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The fastest run (the machine is shared; slower runs measure other load) and the median."""
    fastest = max(runs, key=lambda r: r["tokens_per_s"])
    return {
        **fastest,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real-model", action="store_true")
    parser.add_argument("--model-requests", type=int, default=32)
    parser.add_argument("--model-output-len", type=int, default=64)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "sync_core": best_of(
            [run_sync_core(args.requests, args.max_tokens) for _ in range(args.repeats)]
        ),
    }
    for backend in ("asyncio", "trio"):
        runs = [
            anyio.run(run_async, args.requests, args.max_tokens, backend=backend)
            for _ in range(args.repeats)
        ]
        result[backend] = best_of(runs)
        result[backend]["fraction_of_sync_core"] = (
            result[backend]["tokens_per_s"] / result["sync_core"]["tokens_per_s"]
        )
    if args.real_model:
        result["real_model"] = real_model_comparison(args.model_requests, args.model_output_len)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
