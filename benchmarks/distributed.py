"""Throughput of corral's distributed engines against the in-process one, same run.

The issue-7 offline workload (see benchmarks/throughput.py: a Llama of vocab 32000,
hidden 512, 8 layers, float32 random weights; 128 seeded prompts of 32..512 tokens,
128 greedy output tokens each with ``ignore_eos``), submitted at once through
`open_engine` and awaited on asyncio. Each row is one way to run it on this
machine's CPUs:

- ``in_process_2t``: the engine core in this process, torch on 2 threads.
- ``engine_use_ray_2t``: the core in one Ray actor given 2 CPUs (Ray sets its
  ``OMP_NUM_THREADS`` to 2); the front door here.
- ``dp2_1t``: ``data_parallel_size=2``, two actors of 1 CPU each, the router
  spreading the requests.
- ``tp2_1t``: ``tensor_parallel_size=2`` ("mp" workers), each rank on 1 thread;
  `benchmarks/distributed_tp.py` also times its collectives.

Other rows go in `SYSTEMS`, keyed by name.
Wall time covers the requests only: loading, actor start-up and one warm-up request
per engine (replica) are excluded. With ``--repeats N`` each row times N workloads
of fresh prompts (seeds seed .. seed + N - 1) on the same engine and reports their
sum; a ratio between rows is the median of the N ratios on the same workload (a row
of a few seconds moves by 5 to 10 % between runs on a shared 2-core machine). Ray starts locally, sized to this process's CPUs.
Prints one JSON object (and writes it to ``--out``).

    python benchmarks/distributed.py [--quick] [--tiny] [--repeats N] [--out F]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# corral sets the OpenMP wait policy to PASSIVE when it is imported before torch (see
# corral/__init__.py); the actors import it first, so the in-process row must too,
# or its threads spin against the actors' on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anyio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # the issue-7 workload, model and reporting helpers

TARGETS = {
    # engine_use_ray's throughput over in-process's.
    "engine_use_ray_over_in_process": 0.9,
    # data_parallel_size=2 x 1 thread over in-process on 2 threads.
    "dp2_over_in_process": 1.0,
}


async def run_workload(
    engine_args: dict[str, Any], workloads: list[list[list[int]]], output_len: int
) -> dict[str, Any]:
    """Open an engine with ``engine_args``, warm it up, time each workload on it in
    turn; report them all together, and each under ``repeats``."""
    from corral.engine import open_engine
    from corral.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)

    async with open_engine(disable_log_stats=True, log_requests=False, **engine_args) as engine:
        generated: list[int] = []

        async def one(i: int, prompt: list[int], max_tokens: int) -> None:
            warm = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            async with engine.generate(None, warm, prompt_token_ids=prompt) as stream:
                async for out in stream:
                    if i >= 0:
                        generated[i] = len(out.outputs[0].token_ids)

        # One short request per replica, on prompts of their own (else they would sit
        # in the prefix cache): the first step of each builds the native extension's
        # buffers and the worker's thread pool.
        async with anyio.create_task_group() as tg:
            for r in range(engine_args.get("data_parallel_size", 1)):
                tg.start_soon(one, -1, [3 + r] * 40, 2)
        repeats = []
        for prompts in workloads:
            generated[:] = [0] * len(prompts)
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i, prompt in enumerate(prompts):
                    tg.start_soon(one, i, prompt, params.max_tokens or output_len)
            elapsed = time.perf_counter() - start
            repeats.append(throughput._rates(elapsed, sum(map(len, prompts)), sum(generated)))
        # Summed over the repeats (and the warm-up requests).
        per_replica = {
            name: stats.num_generation_tokens for name, stats in engine.replica_stats().items()
        }
    out = throughput._rates(
        sum(r["elapsed_s"] for r in repeats),
        sum(map(len, itertools.chain.from_iterable(workloads))),
        sum(r["output_tokens"] for r in repeats),
    )
    return out | {"repeats": repeats, "generation_tokens_per_replica": per_replica}


def in_process(folder: Path, common: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(2)
    return {"model": str(folder), **common}


def engine_use_ray(folder: Path, common: dict[str, Any]) -> dict[str, Any]:
    return {"model": str(folder), "engine_use_ray": True, **common}


def data_parallel(folder: Path, common: dict[str, Any]) -> dict[str, Any]:
    return {"model": str(folder), "data_parallel_size": 2, **common}


def tensor_parallel(folder: Path, common: dict[str, Any]) -> dict[str, Any]:
    # Each rank runs as many torch threads as the driver has when the workers start;
    # benchmarks/distributed_tp.py adds the time spent in collectives.
    torch.set_num_threads(1)
    return {"model": str(folder), "tensor_parallel_size": 2, **common}


# Row name -> the engine arguments of that row (the workload is the same for all).
SYSTEMS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "in_process_2t": in_process,
    "engine_use_ray_2t": engine_use_ray,
    "dp2_1t": data_parallel,
    "tp2_1t": tensor_parallel,
}


def _ratio(result: dict[str, Any], num: str, den: str) -> float | None:
    """The median over the repeats of the two rows' throughput ratio on the same
    workload (the workloads' prompt lengths differ, hence their speeds)."""
    a, b = result["systems"].get(num, {}), result["systems"].get(den, {})
    if a.get("status") != "ok" or b.get("status") != "ok":
        return None
    ratios = [
        x["output_tokens_per_s"] / y["output_tokens_per_s"]
        for x, y in zip(a["repeats"], b["repeats"], strict=True)
    ]
    return round(statistics.median(ratios), 3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 requests, 32 output tokens")
    parser.add_argument("--tiny", action="store_true", help="a toy model (smoke tests)")
    parser.add_argument("--requests", type=int, default=None, help="default 128")
    parser.add_argument("--output-len", type=int, default=None, help="default 128")
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time the workload this many times per row, on fresh prompts each time (seeds "
        "seed, seed + 1, ...: nothing in the prefix cache); ratios are medians over them",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        help="engine dtype of every row (float32 by default, as in the earlier runs; "
        "auto: corral's default, bfloat16 on a CPU with hardware bfloat16)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    requests = args.requests or (32 if args.quick else 128)
    output_len = args.output_len or (32 if args.quick else 128)
    shape = throughput.TINY_MODEL if args.tiny else throughput.STANDARD_MODEL
    workloads = [
        throughput.workload(requests, shape["vocab_size"], 32, 512, args.seed + repeat)
        for repeat in range(args.repeats)
    ]
    prompts = workloads[0]
    common = {
        "dtype": args.dtype,
        "max_model_len": throughput.MAX_MODEL_LEN,
        "seed": 0,
        "block_size": throughput.BLOCK_SIZE,
    }
    result: dict[str, Any] = {
        "benchmark": "distributed_throughput",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "config": {
            "model": "tiny llama" if args.tiny else "llama-40M",
            "dtype": args.dtype,
            "requests": requests,
            "output_len": output_len,
            "prompt_tokens": sum(map(len, prompts)),
            "repeats": args.repeats,
            "cpus_of_this_process": len(os.sched_getaffinity(0)),
        },
        "machine": throughput.machine_info(),
        "systems": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        throughput.build_model(folder, shape, args.seed)
        for name in args.systems:
            engine_args = SYSTEMS[name](folder, common)
            run = functools.partial(anyio.run, run_workload, engine_args, workloads, output_len)
            result["systems"][name] = throughput._guarded(name, run)
    result["ratios"] = {
        "engine_use_ray_over_in_process": _ratio(result, "engine_use_ray_2t", "in_process_2t"),
        "dp2_over_in_process": _ratio(result, "dp2_1t", "in_process_2t"),
        # No target: the overhead of an all-reduce per layer, reported as measured.
        "tp2_over_in_process": _ratio(result, "tp2_1t", "in_process_2t"),
    }
    result["targets"] = {
        name: {
            "target": target,
            "value": result["ratios"][name],
            "met": None if result["ratios"][name] is None else result["ratios"][name] >= target,
        }
        for name, target in TARGETS.items()
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
