"""The llama.cpp peer of benchmarks/throughput.py: continuous batching on a GGUF model.

Runs in the llama.cpp peer's venv (benchmarks/peers/setup_llamacpp.sh), never in
corral's. It drives llama.cpp through llama-cpp-python's low-level ctypes API
(``llama_decode`` on ``llama_batch``es), the way llama-server schedules its slots:
every step decodes one token for each generating sequence and fills the rest of
the step's token budget with prompt chunks of the sequences being prefilled. The
high-level ``Llama`` class runs one sequence at a time, and ``llama-batched-bench``
takes one prompt length for all sequences; this loop feeds the benchmark's exact
token ids with their varied lengths, so every system gets the same workload.

Sequences keep their own KV streams (``kv_unified = false``): with one shared
buffer every token would attend over the cells of all sequences (masked), which
grows with the batch. Greedy sampling by llama.cpp's own sampler; the vocabulary
is written without an end-of-sequence token, so every request runs to its
length, as ``ignore_eos`` does for the others.

    python llamacpp_driver.py SPEC.json     (prints one JSON object)

SPEC: {"model": gguf path, "prompts": [[ids]], "warmup": [[ids]], "output_len": n,
"threads": n, "n_batch": step token budget, "max_parallel": n, "ctx_per_seq": n}
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import Any

import llama_cpp as lc


class Slot:
    def __init__(self, seq_id: int, prompt: list[int]) -> None:
        self.seq_id = seq_id
        self.prompt = prompt
        self.fed = 0  # prompt tokens already in the batch stream
        self.generated: list[int] = []
        self.batch_index = -1  # where this slot's logits sit in the last batch

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)


def run(
    ctx: Any, prompts: list[list[int]], output_len: int, n_batch: int, n_parallel: int
) -> dict[str, Any]:
    """All prompts through ``ctx``; returns tokens generated and decode calls."""
    mem = lc.llama_get_memory(ctx)
    sampler = lc.llama_sampler_init_greedy()
    batch = lc.llama_batch_init(n_batch, 0, 1)
    queue = deque(enumerate(prompts))
    free_ids = list(range(n_parallel))
    slots: list[Slot] = []
    generated = 0
    calls = 0
    try:
        while queue or slots:
            while queue and free_ids:
                _, prompt = queue.popleft()
                slots.append(Slot(free_ids.pop(), prompt))
            n = 0

            def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
                nonlocal n
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = logits
                n += 1

            for slot in slots:
                slot.batch_index = -1
                if not slot.prefilling:
                    pos = len(slot.prompt) + len(slot.generated) - 1
                    slot.batch_index = n
                    add(slot.generated[-1], pos, slot.seq_id, True)
            for slot in slots:
                if n >= n_batch:
                    break
                if slot.prefilling:
                    take = min(n_batch - n, len(slot.prompt) - slot.fed)
                    for i in range(slot.fed, slot.fed + take):
                        last = i == len(slot.prompt) - 1
                        if last:
                            slot.batch_index = n
                        add(slot.prompt[i], i, slot.seq_id, last)
                    slot.fed += take
            batch.n_tokens = n
            status = lc.llama_decode(ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")
            calls += 1
            still: list[Slot] = []
            for slot in slots:
                if slot.batch_index >= 0:
                    slot.generated.append(lc.llama_sampler_sample(sampler, ctx, slot.batch_index))
                    generated += 1
                if len(slot.generated) >= output_len:
                    lc.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
                    free_ids.append(slot.seq_id)
                else:
                    still.append(slot)
            slots = still
    finally:
        lc.llama_batch_free(batch)
        lc.llama_sampler_free(sampler)
    return {"output_tokens": generated, "decode_calls": calls}


def main(spec_path: str) -> dict[str, Any]:
    with open(spec_path) as f:
        spec = json.load(f)
    prompts: list[list[int]] = spec["prompts"]
    output_len = int(spec["output_len"])
    n_batch = int(spec["n_batch"])
    n_parallel = min(len(prompts), int(spec["max_parallel"]))
    ctx_per_seq = int(spec["ctx_per_seq"])
    longest = max(len(p) for p in prompts + spec["warmup"]) + output_len
    if longest > ctx_per_seq:
        raise ValueError(
            f"a request needs {longest} positions, more than ctx_per_seq {ctx_per_seq}"
        )

    lc.llama_backend_init()
    model_params = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(spec["model"].encode(), model_params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {spec['model']}")
    params = lc.llama_context_default_params()
    params.n_ctx = n_parallel * ctx_per_seq
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = n_parallel
    params.n_threads = params.n_threads_batch = int(spec["threads"])
    params.kv_unified = False
    ctx = lc.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    try:
        run(ctx, spec["warmup"], min(output_len, 8), n_batch, n_parallel)
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        start = time.perf_counter()
        counts = run(ctx, prompts, output_len, n_batch, n_parallel)
        elapsed = time.perf_counter() - start
        expected = len(prompts) * output_len
        if counts["output_tokens"] != expected:
            raise RuntimeError(f"generated {counts['output_tokens']} tokens, expected {expected}")
        return {
            "elapsed_s": elapsed,
            **counts,
            "config": {
                "driver": "llama-cpp-python low-level API (llama_decode on llama_batch)",
                "llama_cpp_python": lc.__version__,
                "n_parallel": n_parallel,
                "n_ctx": params.n_ctx,
                "n_batch": n_batch,
                "n_ubatch": n_batch,
                "kv_unified": False,
                "type_k": int(params.type_k),
                "type_v": int(params.type_v),
                "flash_attn_type": int(params.flash_attn_type),
                "threads": int(spec["threads"]),
                "system_info": lc.llama_print_system_info().decode(errors="replace").strip(),
            },
        }
    finally:
        lc.llama_free(ctx)
        lc.llama_model_free(model)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
