"""Where a corral step spends its time: per op, prefill and decode apart.

Runs the offline-throughput workload (benchmarks/throughput.py: the issue-7 Llama,
prompts of 32..512 tokens, greedy, ``ignore_eos``) through ``LLM.generate`` twice,
each time on a fresh engine (so that neither run hits the other's prefix cache):

1. **Timed run**, no profiler: every ``EngineCore.step`` is split with
   ``perf_counter`` into scheduling and bookkeeping (the step outside the runner),
   input preparation, the model's forward pass, the logits (``compute_logits``), the
   sampler and the rest of ``runner.execute``.
2. **Profiled run**, ``torch.profiler`` on the same prompts: the self time of every
   op, attributed to its step kind and phase, and grouped into GEMMs (split by
   weight shape), paged attention, the KV-cache write, norms, rotary, activation,
   embedding and other ops.

A step is ``decode`` when every scheduled entry computes one token past its
prompt, ``prefill`` otherwise (prompt chunks, alone or mixed with decodes). The
Python and dispatch share of the forward pass is measured inside the profiled run:
its forward + logits wall time minus the self time of the ops in them. The profiler
adds its own cost per op to that wall time, so the share is an upper bound; the
timed run's phases are the numbers without it. On a shared machine the profiled
run's op times stretch most for the many small ops, whose thread-pool wake-ups
wait on a descheduled thread; compare shares within one run only.

Prints one JSON object (and writes it to ``--out``).

    python benchmarks/profile_step.py --requests 64 --output-len 64 --threads 2 --out F
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (
    STANDARD_MODEL,
    TINY_MODEL,
    build_model,
    machine_info,
    make_llm,
    versions,
    workload,
)

PHASES = ("prepare_input", "forward", "logits", "sampler")
CORRAL_OPS = {
    "corral::paged_attention": "attention",
    "corral::reshape_and_cache": "kv_cache_write",
    "corral::rms_norm": "norms",
    "corral::fused_add_rms_norm": "norms",
    "corral::rotary_embedding": "rotary",
    "corral::silu_and_mul": "activation",
    "corral::gelu_tanh": "activation",
}
# A bfloat16 linear layer with its weight prepacked for oneDNN (corral.model.layers.linear).
PACKED_LINEAR = "mkldnn::_linear_pointwise"
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", PACKED_LINEAR}
EMBEDDING_OPS = {"aten::embedding", "aten::index_select"}


def step_kind(scheduler_output: Any) -> str:
    decode = all(
        n == 1 and seq.num_computed_tokens >= seq.num_prompt_tokens
        for seq, n in zip(scheduler_output.seqs, scheduler_output.num_new_tokens, strict=True)
    )
    return "decode" if decode else "prefill"


class _Timed:
    """Calls ``fn`` under a phase label: a profiler range and, when timing, a clock."""

    def __init__(self, fn: Any, phase: str, probe: Probe) -> None:
        self.fn = fn
        self.phase = phase
        self.probe = probe

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.probe.run(self.phase, self.fn, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fn, name)


class _ModelProxy:
    """The runner's model, with the forward pass and the logits timed apart."""

    def __init__(self, model: Any, probe: Probe) -> None:
        self._model = model
        self._probe = probe

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._probe.run("forward", self._model, *args, **kwargs)

    def compute_logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor:
        return self._probe.run("logits", self._model.compute_logits, hidden, float32)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class Probe:
    """Wraps an engine core's runner: times each step's phases, labels them for the profiler."""

    def __init__(self, core: Any) -> None:
        import corral.model.runner as runner_module

        self.core = core
        self.runner = core.runner
        self.runner_module = runner_module
        self.steps: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None

    def run(self, phase: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(f"phase:{phase}"):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            elapsed = time.perf_counter() - start
        if self._current is not None:
            self._current[phase] = self._current.get(phase, 0.0) + elapsed
        return result

    def execute(self, scheduler_output: Any) -> Any:
        kind = step_kind(scheduler_output) if scheduler_output.seqs else "empty"
        self._current = {
            "kind": kind,
            "num_seqs": len(scheduler_output.seqs),
            "num_tokens": scheduler_output.num_batched_tokens,
        }
        with torch.profiler.record_function(f"step:{kind}"):
            start = time.perf_counter()
            result = self.runner.execute(scheduler_output)
            self._current["execute"] = time.perf_counter() - start
        return result

    def __enter__(self) -> Probe:
        self._saved = (
            self.runner.model,
            self.runner.sampler,
            self.runner_module.prepare_input,
        )
        self.runner.model = _ModelProxy(self.runner.model, self)
        self.runner.sampler = _Timed(self.runner.sampler, "sampler", self)
        self.runner_module.prepare_input = _Timed(
            self.runner_module.prepare_input, "prepare_input", self
        )
        self.core.runner = self
        step = self.core.step

        def timed_step() -> Any:
            self._current = None
            start = time.perf_counter()
            outputs = step()
            elapsed = time.perf_counter() - start
            if self._current is not None:
                self._current["step"] = elapsed
                self.steps.append(self._current)
            self._current = None
            return outputs

        self.core.step = timed_step
        return self

    def __exit__(self, *exc: object) -> None:
        del self.core.step
        self.core.runner = self.runner
        self.runner.model, self.runner.sampler, self.runner_module.prepare_input = self._saved


def phase_table(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time per phase, summed over the steps of each kind, in ms and as shares."""
    table: dict[str, Any] = {}
    for kind in ("prefill", "decode"):
        rows = [s for s in steps if s["kind"] == kind]
        if not rows:
            continue
        total = sum(s["step"] for s in rows)
        parts = {
            "schedule_and_update": sum(s["step"] - s["execute"] for s in rows),
            **{p: sum(s.get(p, 0.0) for s in rows) for p in PHASES},
        }
        parts["runner_other"] = sum(s["execute"] - sum(s.get(p, 0.0) for p in PHASES) for s in rows)
        table[kind] = {
            "steps": len(rows),
            "tokens": sum(s["num_tokens"] for s in rows),
            "mean_seqs": round(sum(s["num_seqs"] for s in rows) / len(rows), 1),
            "total_ms": round(1000 * total, 1),
            "ms": {k: round(1000 * v, 2) for k, v in parts.items()},
            "share": {k: round(v / total, 4) for k, v in parts.items()},
        }
    return table


def _gemm_name(event: Any, linear_names: dict[tuple[int, int], str]) -> str:
    shapes = event.input_shapes or []
    weight = shapes[-1] if shapes else []
    if event.name == PACKED_LINEAR and len(shapes) > 1 and len(shapes[1]) == 2:
        # (input, packed weight [out, in], bias, ...): named by the weight seen as [in, out].
        weight = [shapes[1][1], shapes[1][0]]
    if len(weight) == 2:
        name = linear_names.get((weight[0], weight[1]))
        return f"gemm:{name}" if name else f"gemm:{weight[0]}x{weight[1]}"
    return "gemm:other"


def op_table(prof: Any, linear_names: dict[tuple[int, int], str]) -> dict[str, Any]:
    """Op self time per (step kind, category), from the profiled run's events."""
    self_us: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.events():
        name = event.name
        if name.startswith(("step:", "phase:")):
            continue
        kind = phase = None
        parent = event.cpu_parent
        while parent is not None and kind is None:
            if parent.name.startswith("phase:") and phase is None:
                phase = parent.name.removeprefix("phase:")
            elif parent.name.startswith("step:"):
                kind = parent.name.removeprefix("step:")
            parent = parent.cpu_parent
        if kind is None:
            continue  # outside runner.execute: scheduling, detokenization
        if phase in ("forward", "logits"):
            if name in GEMM_OPS:
                category = _gemm_name(event, linear_names)
            elif name in CORRAL_OPS:
                category = CORRAL_OPS[name]
            elif name in EMBEDDING_OPS and phase == "forward":
                category = "embedding"
            else:
                category = f"{phase}_other_ops"
        elif phase in ("sampler", "prepare_input"):
            category = phase
        else:
            category = "runner_other_ops"
        self_us[kind][category] += event.self_cpu_time_total
    table: dict[str, Any] = {}
    for kind, cats in self_us.items():
        total = sum(cats.values())
        ordered = sorted(cats.items(), key=lambda kv: -kv[1])
        table[kind] = {
            "op_self_ms": round(total / 1000, 1),
            "ms": {k: round(v / 1000, 2) for k, v in ordered},
            "share": {k: round(v / total, 4) for k, v in ordered},
        }
    return table


def forward_ops_ms(ops: dict[str, Any], kind: str) -> float:
    """Op self time inside the forward pass and the logits (profiled run)."""
    entry = ops.get(kind)
    if entry is None:
        return 0.0
    return sum(v for k, v in entry["ms"].items() if k not in ("sampler", "prepare_input"))


def linear_shapes(hf_model: Any) -> dict[tuple[int, int], str]:
    """(in, out) of the transposed weight a GEMM sees -> the projection's name.

    corral merges q/k/v and gate/up; the merged shapes are named here too.
    """
    cfg = hf_model.config
    hidden = cfg.hidden_size
    head = hidden // cfg.num_attention_heads
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head
    return {
        (hidden, qkv): "qkv_proj",
        (cfg.num_attention_heads * head, hidden): "o_proj",
        (hidden, 2 * cfg.intermediate_size): "gate_up_proj",
        (cfg.intermediate_size, hidden): "down_proj",
        (hidden, cfg.vocab_size): "lm_head",
    }


def run_once(
    folder: Path,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    profile: bool,
    dtype: str = "float32",
    kv_cache_dtype: str = "auto",
) -> tuple[list[dict[str, Any]], Any, float]:
    from corral.sampling_params import SamplingParams

    llm = make_llm(folder, dtype, kv_cache_dtype)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompt_token_ids=warmup, sampling_params=params, use_tqdm=False)
    prof = None
    with Probe(llm.engine_core) as probe:
        start = time.perf_counter()
        if profile:
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
            ) as prof:
                llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
        else:
            llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
        elapsed = time.perf_counter() - start
    return probe.steps, prof, elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a toy model (smoke tests)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--min-prompt", type=int, default=32)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--dtype", default="float32", help="corral's dtype (auto, float32, bfloat16)"
    )
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto, fp8 or fp8_e5m2")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = TINY_MODEL if args.tiny else STANDARD_MODEL
    prompts = workload(
        args.requests, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed
    )
    warmup = workload(2, shape["vocab_size"], args.min_prompt, args.max_prompt, args.seed + 2)
    result: dict[str, Any] = {
        "benchmark": "profile_step",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "config": {
            "model_shape": shape,
            "dtype": args.dtype,
            "kv_cache_dtype": args.kv_cache_dtype,
            "requests": args.requests,
            "output_len": args.output_len,
            "prompt_tokens": sum(map(len, prompts)),
            "torch_threads": torch.get_num_threads(),
        },
        "machine": machine_info(),
        "versions": versions(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf_model = build_model(folder, shape, args.seed)
        names = linear_shapes(hf_model)
        del hf_model
        steps, _, elapsed = run_once(
            folder,
            prompts,
            warmup,
            args.output_len,
            profile=False,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
        )
        result["timed"] = {
            "elapsed_s": round(elapsed, 3),
            "output_tokens_per_s": round(args.requests * args.output_len / elapsed, 1),
            "phases": phase_table(steps),
        }
        result["load_average_mid"] = [round(x, 2) for x in os.getloadavg()]
        prof_steps, prof, prof_elapsed = run_once(
            folder,
            prompts,
            warmup,
            args.output_len,
            profile=True,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
        )
    ops = op_table(prof, names)
    prof_phases = phase_table(prof_steps)
    result["profiled"] = {"elapsed_s": round(prof_elapsed, 3), "phases": prof_phases, "ops": ops}
    python_share: dict[str, Any] = {}
    for kind, phases in prof_phases.items():
        forward_ms = phases["ms"]["forward"] + phases["ms"]["logits"]
        op_ms = forward_ops_ms(ops, kind)
        python_share[kind] = {
            "forward_and_logits_wall_ms": round(forward_ms, 1),
            "op_self_ms": round(op_ms, 1),
            "python_and_dispatch_ms": round(max(0.0, forward_ms - op_ms), 1),
            "python_and_dispatch_share_of_step": round(
                max(0.0, forward_ms - op_ms) / phases["total_ms"], 4
            ),
        }
    result["forward_python_overhead"] = python_share
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
