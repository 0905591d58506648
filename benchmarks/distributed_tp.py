"""Tensor parallelism's cost on one machine: TP=2 x 1 thread against one process x 2 threads.

The issue-7 offline workload (benchmarks/throughput.py: a Llama with vocab 32000,
hidden 512, 8 layers, 8 heads, 4 KV heads, float32, random weights; 128 requests of
32..512 prompt tokens, 128 output tokens each with ``ignore_eos``), run in the same
process, same run, by:

- ``in_process_2_threads``: one `LLM`, torch on 2 threads (the model split over the
  cores by the GEMMs' own threading).
- ``in_process_1_thread``: the same on 1 thread (what each rank's compute is split from).
- ``tp2_1_thread_mp``: `LLM(tensor_parallel_size=2)` with the "mp" backend; each of the
  two ranks runs torch on 1 thread (``--ray``: also ``tp2_1_thread_ray``).

For TP=2 the driver's collectives are timed (rank 0's side: waiting for the other rank
included): per step, one all-reduce after the embedding, two per layer (attention
output, MLP down projection), and one gather of the logits (steps = gathers; a step
that only computes a prompt chunk without logits has no gather). ``collective_share`` is
their time over the generate wall time: what tensor parallelism costs over the split
compute, honestly counted.

`tensor_parallel_rows` is the function benchmarks/distributed.py calls; run alone:

    python benchmarks/distributed_tp.py [--quick] [--tiny] [--ray] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (
    BLOCK_SIZE,
    MAX_MODEL_LEN,
    STANDARD_MODEL,
    TINY_MODEL,
    build_model,
    workload,
)


class _TimedGroup:
    """A process group whose collectives are timed until they complete."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.seconds = 0.0
        self.calls = {"allreduce": 0, "gather": 0}

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = {"allreduce": 0, "gather": 0}

    def _timed(self, kind: str, work: Any) -> Any:
        timer = self

        class _Work:
            def wait(self) -> bool:
                start = time.perf_counter()
                try:
                    return bool(work.wait())
                finally:
                    timer.seconds += time.perf_counter() - start
                    timer.calls[kind] += 1

        return _Work()

    def allreduce(self, *args: Any) -> Any:
        return self._timed("allreduce", self.group.allreduce(*args))

    def gather(self, *args: Any) -> Any:
        return self._timed("gather", self.group.gather(*args))


def _generate(
    llm: Any,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    after_warmup: Any = None,
) -> dict[str, Any]:
    from corral.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompt_token_ids=warmup, sampling_params=params, use_tqdm=False)
    if after_warmup is not None:
        after_warmup()
    start = time.perf_counter()
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(map(len, prompts))
    return {
        "elapsed_s": round(elapsed, 3),
        "output_tokens": generated,
        "output_tokens_per_s": round(generated / elapsed, 1),
        "total_tokens_per_s": round((prompt_tokens + generated) / elapsed, 1),
        "tokens": [o.outputs[0].token_ids for o in outputs],
    }


def _in_process(
    folder: Path, prompts: Any, warmup: Any, output_len: int, threads: int
) -> dict[str, Any]:
    from corral.llm import LLM

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        llm = LLM(str(folder), dtype="float32", max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE)
        return {"threads": threads, **_generate(llm, prompts, warmup, output_len)}
    finally:
        torch.set_num_threads(previous)


def _tensor_parallel(
    folder: Path, prompts: Any, warmup: Any, output_len: int, backend: str
) -> dict[str, Any]:
    from corral.llm import LLM

    previous = torch.get_num_threads()
    # Workers start with the driver's thread count: 1 thread on every rank.
    torch.set_num_threads(1)
    llm = None
    try:
        start = time.perf_counter()
        llm = LLM(
            str(folder),
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            block_size=BLOCK_SIZE,
            tensor_parallel_size=2,
            distributed_executor_backend=backend,
        )
        startup = time.perf_counter() - start
        group = llm.engine_core.runner.workers.group
        timed = _TimedGroup(group.process_group)
        # The layers share this one group object; timing its collectives in place.
        object.__setattr__(group, "process_group", timed)
        out = _generate(llm, prompts, warmup, output_len, after_warmup=timed.reset)
        steps = max(timed.calls["gather"], 1)
        return {
            "threads_per_rank": 1,
            "backend": backend,
            "startup_s": round(startup, 2),
            **out,
            "collective_s": round(timed.seconds, 3),
            "collective_share": round(timed.seconds / out["elapsed_s"], 3),
            "collectives": dict(timed.calls),
            "collective_ms_per_step": round(1000 * timed.seconds / steps, 3),
        }
    finally:
        if llm is not None:
            llm.engine_core.runner.shutdown()
        torch.set_num_threads(previous)


def tensor_parallel_rows(
    folder: Path,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    *,
    ray: bool = False,
) -> dict[str, Any]:
    """In-process 2 threads and TP=2 x 1 thread on the model saved in ``folder``.

    Returns the JSON-ready rows, with ``over_in_process`` (TP=2's throughput over the
    2-thread process; ``over_in_process_1_thread`` over one thread) and
    whether the greedy tokens agree (up to near-ties, which random weights rarely hit).
    """
    rows: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    rows["in_process_2_threads"] = _in_process(folder, prompts, warmup, output_len, threads=2)
    rows["in_process_1_thread"] = _in_process(folder, prompts, warmup, output_len, threads=1)
    rows["tp2_1_thread_mp"] = _tensor_parallel(folder, prompts, warmup, output_len, "mp")
    if ray:
        rows["tp2_1_thread_ray"] = _tensor_parallel(folder, prompts, warmup, output_len, "ray")
    rows["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    base = rows["in_process_2_threads"]
    for name in ("tp2_1_thread_mp", "tp2_1_thread_ray"):
        if name in rows:
            row = rows[name]
            row["over_in_process"] = round(
                row["output_tokens_per_s"] / base["output_tokens_per_s"], 3
            )
            row["same_tokens_as_in_process"] = row.pop("tokens") == base["tokens"]
            row["over_in_process_1_thread"] = round(
                row["output_tokens_per_s"] / rows["in_process_1_thread"]["output_tokens_per_s"], 3
            )
    base.pop("tokens")
    rows["in_process_1_thread"].pop("tokens")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 requests, 32 output tokens")
    parser.add_argument("--tiny", action="store_true", help="a toy model (smoke tests)")
    parser.add_argument("--ray", action="store_true", help="also the Ray backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    requests, output_len = (16, 32) if args.quick else (128, 128)
    shape = TINY_MODEL if args.tiny else STANDARD_MODEL
    prompts = workload(requests, shape["vocab_size"], 32, 512, args.seed)
    warmup = workload(2, shape["vocab_size"], 32, 512, args.seed + 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model(folder, shape, args.seed)
        result = {
            "benchmark": "tensor_parallel",
            "command": " ".join(
                ["distributed_tp.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "config": {
                "model_shape": shape,
                "dtype": "float32",
                "requests": requests,
                "output_len": output_len,
                "cpu_count": os.cpu_count(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            },
            **tensor_parallel_rows(folder, prompts, warmup, output_len, ray=args.ray),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
