"""Offline throughput of `corral.LLM` against transformers, measured in the same run.

Standard workload (issue 7): a Llama with vocab 32000, hidden 512, intermediate
1408, 8 layers, 8 heads, 4 KV heads, float32, random weights drawn from a fixed
seed; 128 requests whose prompt lengths are drawn uniformly from 32..512 (seeded),
128 output tokens each with ``ignore_eos`` (transformers: EOS disabled), so every
system produces exactly the same number of tokens.

The model is built once in this process with transformers and saved, with a
word-level tokenizer covering its vocabulary; corral loads that folder and the
transformers peers use the very same module, so all systems run the same weights
on the same prompts:

- ``corral``: ``LLM.generate`` over all requests (continuous batching, paged KV).
- ``generate_bs{8,16,32}``: transformers ``generate`` over static left-padded batches.
- ``generate_batch``: transformers' own continuous batching
  (``model.generate_batch``), with a paged cache sized like corral's (block 16,
  room for the whole workload, the same per-step token budget).
- ``llamacpp_{f32,bf16}``: llama.cpp built from source with native CPU flags, on
  GGUF files converted from the same checkpoint, driven by continuous batching
  over its batched API (benchmarks/peers/llamacpp_driver.py).
- ``openvino_{default,f32}``: OpenVINO GenAI's ``ContinuousBatchingPipeline`` on
  the model exported by optimum-intel, at the CPU plugin's default precision and
  at f32 (benchmarks/peers/openvino_driver.py).

The external peers (llama.cpp, OpenVINO) run in venvs and processes of their own,
set up once by the scripts of benchmarks/peers/; one that is not set up is
reported with status "not installed" and the reason, never left out.

Wall time covers the generate calls only (loading excluded; each system does one
short warm-up call first). Also measured in the same run:

- MFU: useful FLOPs = prompt tokens x 2 x (non-embedding parameters without
  lm_head) + generated tokens x 2 x (non-embedding parameters with lm_head),
  divided by wall time and by the float32 GEMM rate of this machine (2048^3
  matmul, median of several, measured before and after the systems, with the same
  thread count). Attention FLOPs (QK^T and PV, causal) are reported separately.
- Decode-only regime: corral's generated tokens/s over the steps in which exactly
  ``--decode-batch`` (64) requests run, all past their prompt (prefill excluded).
- KV waste: allocated slots not holding a token / allocated slots, read from the
  block tables and context lengths of every scheduled step; "steady state" is the
  steps that only decode.

Prints one JSON object (and writes it to ``--out``); ``--plot`` draws a bar chart.

    python benchmarks/throughput.py [--quick] [--tiny] [--threads N] [--out F] [--plot F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The peers' package sits next to this script; imported the same way when the
# script is run directly and when a test loads it by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import external

EOS_ID = 1
PAD_ID = 2
FIRST_WORD_ID = 3
BLOCK_SIZE = 16  # corral's default; generate_batch gets the same page size
MAX_MODEL_LEN = 1024  # corral's context limit; llama.cpp gets as much per sequence

STANDARD_MODEL = {
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
# For the smoke test: the same architecture, small enough that every system runs
# in seconds.
TINY_MODEL = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

TARGETS = {
    "corral_over_best_static_generate": 2.0,
    "corral_over_generate_batch": 5.0,
    "mfu_end_to_end": 0.5,
    "kv_waste_steady_state": 0.04,
}


# ---------------------------------------------------------------- model, workload


def build_model(folder: Path, shape: dict[str, int], seed: int) -> Any:
    """Save a Llama of ``shape`` (random weights from ``seed``) and its tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models

    config = transformers.LlamaConfig(
        **shape,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    vocab = {"<s>": 0, "</s>": EOS_ID, "<pad>": PAD_ID} | {
        f"w{i}": i for i in range(FIRST_WORD_ID, shape["vocab_size"])
    }
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    return model


def workload(
    num_requests: int, vocab_size: int, min_len: int, max_len: int, seed: int
) -> list[list[int]]:
    """Seeded prompts with lengths drawn uniformly from ``min_len..max_len``."""
    rng = random.Random(seed)
    return [
        [rng.randrange(FIRST_WORD_ID, vocab_size) for _ in range(rng.randint(min_len, max_len))]
        for _ in range(num_requests)
    ]


def param_counts(model: Any) -> dict[str, int]:
    """Parameters by role, counted on the transformers module both engines load."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    lm_head = model.lm_head.weight.numel()
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    non_embedding = total - embed - (0 if tied else lm_head)
    return {
        "total": total,
        "embedding": embed,
        "lm_head": lm_head,
        "non_embedding_without_lm_head": non_embedding,
        "non_embedding_with_lm_head": non_embedding + lm_head,
    }


def useful_flops(params: dict[str, int], prompt_tokens: int, generated: int) -> float:
    """Issue 7's definition: prompt tokens skip the lm_head, generated ones pay it."""
    return (
        2.0 * prompt_tokens * params["non_embedding_without_lm_head"]
        + 2.0 * generated * params["non_embedding_with_lm_head"]
    )


def attention_flops(shape: dict[str, int], prompt_lens: list[int], output_len: int) -> float:
    """QK^T and PV of causal attention (2 matmuls x 2 FLOPs per multiply-add).

    Prompt token ``i`` (0-based) attends to ``i + 1`` positions. Generated token
    ``k`` (1-based) is fed back at position ``prompt + k - 1`` and attends to
    ``prompt + k`` positions; the last one is never fed back.
    """
    width = shape["hidden_size"]  # num_heads x head_dim
    per_pair = 4.0 * width * shape["num_hidden_layers"]
    pairs = 0
    for n in prompt_lens:
        pairs += n * (n + 1) // 2
        pairs += sum(n + k for k in range(1, output_len))
    return per_pair * pairs


# ---------------------------------------------------------------- GEMM rate


def gemm_rate(
    size: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32, rows: int | None = None
) -> dict[str, Any]:
    """``rows`` x ``size`` x ``size`` matmul FLOP/s (``rows`` defaults to ``size``).

    The median of ``repeats`` timed calls after one warm-up, in ``dtype``.
    """
    m = size if rows is None else rows
    a = torch.randn(m, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    out = torch.empty(m, size, dtype=dtype)
    torch.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    flops = 2.0 * m * size * size
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "rows": m,
        "size": size,
        "repeats": repeats,
        "median_flops_per_s": flops / statistics.median(times),
        "best_flops_per_s": flops / min(times),
        "worst_flops_per_s": flops / max(times),
    }


# ---------------------------------------------------------------- corral


class StepRecorder:
    """Wraps the core's runner to see each scheduled step (read-only) and time it.

    Per step it keeps: sequences, batched tokens, whether every entry decodes one
    token past its prompt, wall time of ``execute``, and the KV slots allocated to
    the scheduled sequences and those holding a token after the step.
    """

    def __init__(self, runner: Any, block_size: int) -> None:
        self.runner = runner
        self.block_size = block_size
        self.steps: list[dict[str, Any]] = []

    def execute(self, scheduler_output: Any) -> Any:
        seqs = scheduler_output.seqs
        num_new = scheduler_output.num_new_tokens
        decode_only = bool(seqs) and all(
            n == 1 and s.num_computed_tokens >= s.num_prompt_tokens
            for s, n in zip(seqs, num_new, strict=True)
        )
        # Shared blocks (forks, prefix hits) count once: they are allocated once.
        blocks: set[int] = set()
        held = 0
        for seq, n in zip(seqs, num_new, strict=True):
            blocks.update(seq.block_table)
            held += seq.num_computed_tokens + n
        start = time.perf_counter()
        result = self.runner.execute(scheduler_output)
        elapsed = time.perf_counter() - start
        self.steps.append(
            {
                "num_seqs": len(seqs),
                "num_tokens": scheduler_output.num_batched_tokens,
                "decode_only": decode_only,
                "execute_s": elapsed,
                "allocated_slots": len(blocks) * self.block_size,
                "held_tokens": held,
            }
        )
        return result


def kv_waste(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of allocated KV slots not holding a token, over decode-only steps
    (steady state) and over all steps; ratio of sums, i.e. slot-weighted."""

    def share(rows: list[dict[str, Any]]) -> float | None:
        allocated = sum(r["allocated_slots"] for r in rows)
        if not allocated:
            return None
        return round(1.0 - sum(r["held_tokens"] for r in rows) / allocated, 5)

    decode = [r for r in steps if r["decode_only"]]
    per_step = [1.0 - r["held_tokens"] / r["allocated_slots"] for r in decode]
    return {
        "steady_state": share(decode),
        "steady_state_max_step": round(max(per_step), 5) if per_step else None,
        "all_steps": share(steps),
        "steady_state_steps": len(decode),
        "block_size": BLOCK_SIZE,
    }


def make_llm(folder: Path, dtype: str = "auto", kv_cache_dtype: str = "auto") -> Any:
    from corral.llm import LLM

    return LLM(
        str(folder),
        dtype=dtype,
        kv_cache_dtype=kv_cache_dtype,
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        block_size=BLOCK_SIZE,
    )


def corral_dtype(llm: Any) -> str:
    """The dtype corral's weights run in (what ``dtype="auto"`` chose)."""
    return str(llm.engine_core.runner.model_config.dtype).removeprefix("torch.")


def run_corral(
    llm: Any, prompts: list[list[int]], warmup: list[list[int]], output_len: int
) -> dict[str, Any]:
    from corral.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompt_token_ids=warmup, sampling_params=params, use_tqdm=False)
    core = llm.engine_core
    recorder = StepRecorder(core.runner, BLOCK_SIZE)
    core.runner = recorder
    try:
        start = time.perf_counter()
        outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
        elapsed = time.perf_counter() - start
    finally:
        core.runner = recorder.runner
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    steps = recorder.steps
    model_s = sum(r["execute_s"] for r in steps)
    return {
        **_rates(elapsed, sum(map(len, prompts)), generated),
        "steps": len(steps),
        "model_time_share": round(model_s / elapsed, 4),
        "max_running": max((r["num_seqs"] for r in steps), default=0),
        "kv_waste": kv_waste(steps),
        "config": {
            "block_size": BLOCK_SIZE,
            "max_num_batched_tokens": core.config.max_num_batched_tokens,
            "max_num_seqs": core.config.max_num_seqs,
            "num_kv_blocks": core.config.num_kv_blocks,
        },
    }


def run_corral_decode(
    llm: Any, prompts: list[list[int]], batch: int, output_len: int
) -> dict[str, Any]:
    """Tokens/s over the steps where exactly ``batch`` requests decode together.

    All ``batch`` requests are queued at once; the steps that prefill (or mix
    prefill with decode) are excluded, and so is the tail where requests finish.
    Each step is timed around ``EngineCore.step`` (scheduling and output building
    included: they are part of the engine's cost per token).
    """
    from corral.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    core = llm.engine_core
    recorder = StepRecorder(core.runner, BLOCK_SIZE)
    core.runner = recorder
    chosen: list[float] = []
    try:
        for i, ids in enumerate(prompts[:batch]):
            core.add_request(f"decode-{i}", list(ids), params)
        while core.has_unfinished_requests():
            seen = len(recorder.steps)
            start = time.perf_counter()
            core.step()
            elapsed = time.perf_counter() - start
            # A step with no model work leaves no record; it is not a decode step.
            if len(recorder.steps) > seen:
                record = recorder.steps[-1]
                if record["decode_only"] and record["num_seqs"] == batch:
                    chosen.append(elapsed)
    finally:
        core.runner = recorder.runner
    if not chosen:
        return {"error": f"no step decoded exactly {batch} requests"}
    elapsed = sum(chosen)
    return {
        "batch": batch,
        "steps": len(chosen),
        "elapsed_s": round(elapsed, 6),
        "output_tokens": batch * len(chosen),
        "output_tokens_per_s": round(batch * len(chosen) / elapsed, 1),
        "median_step_ms": round(1000 * statistics.median(chosen), 2),
    }


# ---------------------------------------------------------------- transformers


def run_generate(
    model: Any,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    batch_size: int,
) -> dict[str, Any]:
    """Static batches of ``batch_size`` left-padded prompts, each run to ``output_len``."""
    model.generation_config.eos_token_id = None

    def generate(batch: list[list[int]]) -> int:
        longest = max(map(len, batch))
        ids = torch.tensor([[PAD_ID] * (longest - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                pad_token_id=PAD_ID,
            )
        return int(out.shape[0] * (out.shape[1] - longest))

    generate(warmup)
    start = time.perf_counter()
    generated = sum(
        generate(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)
    )
    elapsed = time.perf_counter() - start
    padded = sum(
        max(map(len, prompts[i : i + batch_size])) * len(prompts[i : i + batch_size])
        for i in range(0, len(prompts), batch_size)
    )
    return {
        **_rates(elapsed, sum(map(len, prompts)), generated),
        "batch_size": batch_size,
        "padded_prompt_tokens": padded,
    }


def run_generate_batch(
    model: Any,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    max_batch_tokens: int,
) -> dict[str, Any]:
    """transformers' continuous batching over all prompts at once.

    Its cache is sized explicitly: left to itself it sizes the cache from a share
    of free memory, which on this CPU box took tens of seconds per call even for
    a toy model. Pages of 16 tokens, room for every request's full context, and
    corral's per-step token budget make the two engines' settings alike.
    """
    import transformers

    pages = sum(-(-(len(p) + output_len) // BLOCK_SIZE) for p in prompts) + 16
    cb_config = transformers.ContinuousBatchingConfig(
        page_size=BLOCK_SIZE, num_blocks=pages, max_batch_tokens=max_batch_tokens
    )
    gen_config = transformers.GenerationConfig(
        max_new_tokens=output_len, do_sample=False, eos_token_id=None, pad_token_id=PAD_ID
    )

    def generate(batch: list[list[int]]) -> int:
        with torch.inference_mode():
            results = model.generate_batch(
                batch,
                generation_config=gen_config,
                continuous_batching_config=cb_config,
                progress_bar=False,
                warmup=False,
            )
        missing = len(batch) - len(results)
        errors = [r.error for r in results.values() if r.error]
        if missing or errors:
            raise RuntimeError(f"generate_batch: {missing} results missing, errors {errors[:3]}")
        return sum(len(r.generated_tokens) for r in results.values())

    generate(warmup)
    start = time.perf_counter()
    generated = generate(prompts)
    elapsed = time.perf_counter() - start
    return {
        **_rates(elapsed, sum(map(len, prompts)), generated),
        "config": {
            "page_size": BLOCK_SIZE,
            "num_blocks": pages,
            "max_batch_tokens": max_batch_tokens,
        },
    }


EXTERNAL_PEERS = {
    "llamacpp": ("llamacpp_f32", "llamacpp_bf16"),
    "openvino": ("openvino_default", "openvino_f32"),
}


def run_external_peers(
    systems: dict[str, dict[str, Any]],
    folder: Path,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    budget: int,
    max_model_len: int,
    skip_reason: str | None = None,
) -> None:
    """Run llama.cpp and OpenVINO GenAI (each in its own process) into ``systems``.

    Every peer gets an entry: "ok" with its rates, "failed" with the error, "not
    installed" with the reason (its setup script has not run), or "skipped" with
    ``skip_reason``.
    """
    if skip_reason is not None:
        for names in EXTERNAL_PEERS.values():
            for name in names:
                systems[name] = {"status": "skipped", "reason": skip_reason}
        return
    prompt_tokens = sum(map(len, prompts))
    common = {
        "prompts": prompts,
        "warmup": warmup,
        "output_len": output_len,
        "threads": torch.get_num_threads(),
        "budget": budget,
    }
    work = folder / "peers"
    work.mkdir(exist_ok=True)
    for peer, names in EXTERNAL_PEERS.items():
        try:
            if peer == "llamacpp":
                runs = external.llamacpp(folder, work, max_model_len=max_model_len, **common)
            else:
                runs = external.openvino(folder, work, **common)
        except external.PeerNotInstalled as exc:
            for name in names:
                systems[name] = {"status": "not installed", "reason": str(exc)}
            print(f"[throughput] {peer}: not installed ({exc})", file=sys.stderr)
            continue
        for name in names:
            run = runs[name]

            def measured(run: Callable[[], dict[str, Any]] = run) -> dict[str, Any]:
                out = run()
                rates = _rates(out.pop("elapsed_s"), prompt_tokens, out.pop("output_tokens"))
                return rates | out

            systems[name] = _guarded(name, measured)


def _rates(elapsed: float, prompt_tokens: int, generated: int) -> dict[str, Any]:
    return {
        "elapsed_s": round(elapsed, 6),
        "output_tokens": generated,
        "output_tokens_per_s": round(generated / elapsed, 1),
        "total_tokens_per_s": round((prompt_tokens + generated) / elapsed, 1),
    }


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one system; a failure becomes the reason in the JSON instead of a crash.

    The 1-minute load average before and after each system goes into its entry:
    on a shared machine it tells which numbers ran beside someone else's work.
    """
    load = {"load_average_1m_before": round(os.getloadavg()[0], 2)}
    print(f"[throughput] {name} ...", file=sys.stderr, flush=True)
    try:
        out = {"status": "ok", **fn()}
        load["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        print(f"[throughput] {name}: {out.get('output_tokens_per_s')} tok/s", file=sys.stderr)
        return out | load
    # Any failure of one system is reported in the JSON, not fatal to the others.
    except Exception as exc:
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback_tail": traceback.format_exc().splitlines()[-6:],
        } | load


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": mem,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def versions() -> dict[str, str]:
    import transformers

    import corral

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "corral": corral.__version__,
    }


def compute_dtype(name: str, system: dict[str, Any]) -> str:
    """The dtype a system's GEMMs run in: what its MFU is measured against.

    corral's entries say it; llama.cpp's bf16 GGUF multiplies in bfloat16; OpenVINO's
    CPU plugin computes in bfloat16 by default where the CPU has hardware bfloat16.
    Every other system runs float32.
    """
    if "dtype" in system:
        return str(system["dtype"])
    if name == "llamacpp_bf16":
        return "bfloat16"
    if name == "openvino_default":
        from corral.model.config import cpu_has_fast_bfloat16

        return "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    return "float32"


def gemm_rates(size: int, rows: int) -> dict[str, dict[str, Any]]:
    """float32 and bfloat16 GEMM rates: square ``size``^3, and ``rows`` x ``size``^2."""
    return {
        f"{name}{suffix}": gemm_rate(size, dtype=dtype, rows=m)
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        for suffix, m in (("", None), (f"_rows{rows}", rows))
    }


def add_efficiency(
    result: dict[str, Any],
    params: dict[str, int],
    prompt_tokens: int,
    attn: float,
    peaks: dict[str, float],
) -> None:
    """MFU (and MFU counting attention too) for every system that ran.

    Each against the GEMM rate of its own compute dtype (``compute_dtype``).
    """
    for name, system in result["systems"].items():
        if system.get("status") != "ok":
            continue
        dtype = compute_dtype(name, system)
        peak = peaks[dtype]
        system["mfu_against"] = f"{dtype} GEMM"
        useful = useful_flops(params, prompt_tokens, system["output_tokens"])
        system["useful_flops_per_s"] = useful / system["elapsed_s"]
        system["mfu"] = round(useful / system["elapsed_s"] / peak, 4)
        system["mfu_with_attention"] = round((useful + attn) / system["elapsed_s"] / peak, 4)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    systems = result["systems"]

    def rate(name: str) -> float | None:
        s = systems.get(name, {})
        return s.get("output_tokens_per_s") if s.get("status") == "ok" else None

    static = {k: rate(k) for k in systems if k.startswith("generate_bs") and rate(k)}
    best_static = max(static, key=lambda k: static[k]) if static else None
    corral = rate("corral")
    summary: dict[str, Any] = {"best_static_generate": best_static}
    summary["corral_over_best_static_generate"] = (
        round(corral / static[best_static], 3) if corral and best_static else None
    )
    summary["corral_over_generate_batch"] = (
        round(corral / rate("generate_batch"), 3) if corral and rate("generate_batch") else None
    )
    again = rate("corral_again")
    if again and best_static:
        summary["corral_again_over_best_static_generate"] = round(again / static[best_static], 3)
    for name in static:
        summary[f"corral_over_{name}"] = round(corral / static[name], 3) if corral else None
    peers = {name: rate(name) for names in EXTERNAL_PEERS.values() for name in names if rate(name)}
    for name, peer_rate in peers.items():
        summary[f"corral_over_{name}"] = round(corral / peer_rate, 3) if corral else None
    best_peer = max(peers, key=lambda k: peers[k]) if peers else None
    summary["best_external_peer"] = best_peer
    summary["corral_over_best_external_peer"] = (
        round(corral / peers[best_peer], 3) if corral and best_peer else None
    )
    summary["external_peer_status"] = {
        name: systems.get(name, {}).get("status")
        for names in EXTERNAL_PEERS.values()
        for name in names
    }
    summary["corral_dtype"] = systems.get("corral", {}).get("dtype")
    summary["corral_mfu"] = systems.get("corral", {}).get("mfu")
    float32 = rate("corral_float32")
    summary["corral_float32_mfu"] = systems.get("corral_float32", {}).get("mfu")
    summary["corral_over_corral_float32"] = (
        round(corral / float32, 3) if corral and float32 else None
    )
    kv_fp8 = rate("corral_kv_fp8")
    summary["corral_kv_fp8_over_corral"] = round(kv_fp8 / corral, 3) if corral and kv_fp8 else None
    best = max((r for r in (corral, float32, again, kv_fp8) if r), default=None)
    summary["corral_best_over_best_external_peer"] = (
        round(best / peers[best_peer], 3) if best and best_peer else None
    )
    decode = result.get("decode_only", {})
    summary["corral_decode_tokens_per_s"] = decode.get("output_tokens_per_s")
    summary["corral_decode_mfu"] = decode.get("mfu")
    summary["corral_decode_share_of_gemm_rate_at_batch_rows"] = decode.get(
        "share_of_gemm_rate_at_batch_rows"
    )
    summary["kv_waste_steady_state"] = (
        systems.get("corral", {}).get("kv_waste", {}).get("steady_state")
    )
    return summary


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, s in result["systems"].items() if s.get("status") == "ok"]
    labels = [
        n.replace("generate_bs", "generate\nbs=").replace("_batch", "\n_batch") for n in names
    ]
    rates = [result["systems"][n]["output_tokens_per_s"] for n in names]
    mfus = [100 * result["systems"][n]["mfu"] for n in names]
    colors = ["tab:orange" if n.startswith("corral") else "tab:blue" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    bars = ax1.bar(labels, rates, color=colors)
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.set_ylabel("generated tokens / s")
    ax1.set_title("End-to-end offline throughput")
    bars = ax2.bar(labels, mfus, color=colors)
    ax2.bar_label(bars, fmt="%.1f%%", fontsize=8)
    ax2.axhline(100 * TARGETS["mfu_end_to_end"], ls="--", color="gray", lw=1)
    ax2.set_ylabel("MFU (% of measured float32 GEMM rate)")
    ax2.set_title("Model FLOPs utilization")
    cfg = result["config"]
    fig.suptitle(
        f"{cfg['model']}, {cfg['requests']} requests, prompts {cfg['prompt_len']}, "
        f"{cfg['output_len']} out; torch threads {cfg['torch_threads']}",
        fontsize=9,
    )
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="16 requests, 32 output tokens, decode batch 16"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a toy model of the same architecture (smoke tests)"
    )
    parser.add_argument("--requests", type=int, default=None, help="default 128")
    parser.add_argument("--output-len", type=int, default=None, help="default 128")
    parser.add_argument("--min-prompt", type=int, default=32)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--decode-batch", type=int, default=None, help="default 64")
    parser.add_argument(
        "--static-batch-sizes", type=int, nargs="*", default=[8, 16, 32], metavar="B"
    )
    parser.add_argument("--no-generate-batch", action="store_true")
    parser.add_argument(
        "--no-external-peers",
        action="store_true",
        help="do not run llama.cpp and OpenVINO GenAI (reported as skipped)",
    )
    parser.add_argument(
        "--repeat-corral",
        action="store_true",
        help="run corral again after the peers (corral_again): on a shared machine the "
        "two corral runs bracket the peers' load",
    )
    parser.add_argument(
        "--kv-fp8",
        action="store_true",
        help="also run corral with kv_cache_dtype='fp8' (corral_kv_fp8)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="bar chart (PNG/SVG)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quick = args.quick
    requests = args.requests or (16 if quick else 128)
    output_len = args.output_len or (32 if quick else 128)
    decode_batch = min(args.decode_batch or (16 if quick else 64), requests)
    shape = TINY_MODEL if args.tiny else STANDARD_MODEL
    prompts = workload(requests, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed)
    prompt_lens = list(map(len, prompts))
    # Warm-up prompts of their own: warming up on the measured prompts would leave
    # them in corral's prefix cache.
    warmup = workload(2, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed + 2)
    prompt_tokens = sum(prompt_lens)
    model_name = "tiny llama" if args.tiny else "llama-40M"
    result: dict[str, Any] = {
        "benchmark": "offline_throughput",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "config": {
            "model": model_name,
            "model_shape": shape,
            "dtype": "float32 checkpoint; corral runs dtype='auto' and float32",
            "requests": requests,
            "prompt_len": f"{args.min_prompt}..{args.max_prompt}",
            "prompt_tokens": prompt_tokens,
            "output_len": output_len,
            "decode_batch": decode_batch,
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        },
        "machine": machine_info(),
        "versions": versions(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "targets": TARGETS,
    }
    gemm_before = gemm_rates(args.gemm_size, decode_batch)
    systems: dict[str, dict[str, Any]] = {}
    result["systems"] = systems
    # Fresh prompts (another seed) for the decode regime: the main run's blocks sit
    # in the prefix cache, and the decode regime should not depend on that.
    decode_prompts = workload(
        decode_batch, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed + 1
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf_model = build_model(folder, shape, args.seed)
        params = param_counts(hf_model)
        budget = 0
        # corral's default (dtype="auto": bfloat16 on a CPU with hardware bfloat16)
        # is the headline "corral"; float32 runs beside it as "corral_float32"
        # unless "auto" already is float32 on this CPU, and the default dtype with a
        # float8 KV cache as "corral_kv_fp8" (--kv-fp8).
        runs = [("corral", "decode_only", "auto", "auto")]
        runs.append(("corral_float32", "decode_only_float32", "float32", "auto"))
        if args.kv_fp8:
            runs.append(("corral_kv_fp8", "decode_only_kv_fp8", "auto", "fp8"))
        default_dtype = None
        for name, decode_key, dtype, kv_cache_dtype in runs:
            llm = make_llm(folder, dtype, kv_cache_dtype)
            chosen = corral_dtype(llm)
            if name == "corral":
                default_dtype = chosen
            elif name == "corral_float32" and chosen == default_dtype:
                result["config"]["corral_float32"] = "not run: dtype='auto' is float32 here"
                continue
            systems[name] = _guarded(
                name, lambda llm=llm: run_corral(llm, prompts, warmup, output_len)
            )
            systems[name]["dtype"] = chosen
            systems[name]["kv_cache_dtype"] = kv_cache_dtype
            result[decode_key] = _guarded(
                decode_key,
                lambda llm=llm: run_corral_decode(llm, decode_prompts, decode_batch, output_len),
            )
            result[decode_key]["dtype"] = chosen
            budget = llm.engine_core.config.max_num_batched_tokens
            # Frees corral's KV cache (gigabytes) before the next system runs.
            llm = None
        result["config"]["corral_dtype"] = default_dtype
        for bs in args.static_batch_sizes:
            systems[f"generate_bs{bs}"] = _guarded(
                f"generate_bs{bs}",
                lambda bs=bs: run_generate(hf_model, prompts, warmup, output_len, bs),
            )
        if args.no_generate_batch:
            systems["generate_batch"] = {"status": "skipped", "error": "--no-generate-batch"}
        else:
            systems["generate_batch"] = _guarded(
                "generate_batch",
                lambda: run_generate_batch(hf_model, prompts, warmup, output_len, budget),
            )
        run_external_peers(
            systems,
            folder,
            prompts,
            warmup,
            output_len,
            budget,
            MAX_MODEL_LEN,
            skip_reason="--no-external-peers" if args.no_external_peers else None,
        )
        if args.repeat_corral:
            llm = make_llm(folder, "auto")
            systems["corral_again"] = _guarded(
                "corral_again", lambda: run_corral(llm, prompts, warmup, output_len)
            )
            systems["corral_again"]["dtype"] = corral_dtype(llm)
            llm = None
    gemm_after = gemm_rates(args.gemm_size, decode_batch)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    # Each reference rate is the better of its two medians: a busy neighbour during
    # one of them would otherwise flatter every MFU.
    peaks = {
        key: max(gemm_before[key]["median_flops_per_s"], gemm_after[key]["median_flops_per_s"])
        for key in gemm_before
    }
    attn = attention_flops(shape, prompt_lens, output_len)
    result["flops"] = {
        "params": params,
        "gemm_before": gemm_before,
        "gemm_after": gemm_after,
        "gemm_flops_per_s_used": peaks,
        "useful_flops": useful_flops(params, prompt_tokens, requests * output_len),
        "attention_flops": attn,
        "attention_share_of_all": round(
            attn / (attn + useful_flops(params, prompt_tokens, requests * output_len)), 4
        ),
    }
    add_efficiency(result, params, prompt_tokens, attn, peaks)
    for key in ("decode_only", "decode_only_float32", "decode_only_kv_fp8"):
        decode = result.get(key, {})
        if decode.get("status") == "ok":
            # Per decode token: one pass of every non-embedding weight, lm_head included.
            per_token = 2.0 * params["non_embedding_with_lm_head"]
            rate = decode["output_tokens_per_s"] * per_token
            decode["mfu"] = round(rate / peaks[decode["dtype"]], 4)
            # Against the same dtype's GEMM at the decode batch's row count.
            decode["share_of_gemm_rate_at_batch_rows"] = round(
                rate / peaks[f"{decode['dtype']}_rows{decode_batch}"], 4
            )
    result["summary"] = summarize(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
