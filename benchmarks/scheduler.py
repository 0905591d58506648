"""Cost of the engine core per running sequence per decode step, with the fake model.

Fills an `EngineCore` with N decoding sequences (prefills done), then runs steps and
times each phase with the process's CPU time (the machine is shared, so wall time
would count other processes): ``schedule`` (`Scheduler.schedule`), ``runner`` (the
fake model, reported but not part of the core), ``update`` (appending tokens, stop
checks, block bookkeeping) and ``outputs`` (building the cumulative RequestOutputs).
``core_us = schedule + update + outputs``. The machine's other load makes single
runs noisy, so each configuration runs ``--repeats`` times and the best and the
median of ``core_us`` are reported (the phase split is the best run's). Each size runs twice: with Python's
garbage collector as configured by default, and after ``gc.freeze()`` (what a
long-running server does after start-up, so that the collector stops re-scanning
start-up objects). Prints JSON.

With ``--output-kinds`` (issue 16), each size also runs once per `RequestOutputKind`
with text (the fake one-letter-per-token detokenizer) and a ``front_door`` phase:
what the async front door does with every step's output of every request, minus the
event loop's task switch (equal for every kind): the engine loop's
`RequestState.publish` (store the snapshot, send the wake-up), the consumer taking
the wake-up, and for DELTA the `DeltaCursor` cutting the snapshot down to the new
tokens and text. ``front_door_us`` is per request per step, like ``core_us``.

    python benchmarks/scheduler.py [--steps 200] [--repeats 5] [--sizes 64 256 1024]
        [--output-kinds cumulative delta]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time

from corral._engine.stream import DeltaCursor, RequestState
from corral.core import EngineCore
from corral.outputs import RequestOutput
from corral.sampling_params import RequestOutputKind, SamplingParams
from corral.testing import FakeDetokenizer, FakeModelRunner, make_fake_core

TARGET_US = 2.0


def _ready_core(
    num_seqs: int,
    steps: int,
    block_size: int,
    prompt_len: int,
    output_kind: RequestOutputKind | None = None,
) -> EngineCore:
    """A core whose ``num_seqs`` sequences have finished their prefill (with text when
    ``output_kind`` is given)."""
    max_len = prompt_len + steps + 64
    # A realistic vocabulary: token ids above 256 are distinct int objects, as they
    # are when a real runner hands over its samples.
    runner = FakeModelRunner(block_size=block_size, check_context=False, vocab_size=32000)
    core = make_fake_core(
        runner,
        eos_token_ids=(),
        detokenizer=None if output_kind is None else FakeDetokenizer(),
        block_size=block_size,
        num_kv_blocks=num_seqs * (-(-max_len // block_size)) + 16,
        num_host_blocks=0,
        max_model_len=max_len,
        max_num_seqs=num_seqs,
        max_num_batched_tokens=max(2048, num_seqs),
    )
    params = SamplingParams(
        temperature=0.0,
        max_tokens=steps + 32,
        ignore_eos=True,
        output_kind=output_kind or RequestOutputKind.CUMULATIVE,
    )
    for i in range(num_seqs):
        core.add_request(str(i), [(i * 7 + j) % 31999 + 1 for j in range(prompt_len)], params)
    while core.stats().num_waiting or any(
        seq.num_computed_tokens < seq.num_prompt_tokens for seq in core.scheduler.running
    ):
        core.step()
    return core


class _FrontDoor:
    """The synchronous part of the async front door for every request of a core."""

    def __init__(self, core: EngineCore, output_kind: RequestOutputKind) -> None:
        self.states: dict[str, RequestState] = {}
        self.cursors: dict[str, DeltaCursor | None] = {}
        for request_id, request in core._requests.items():
            params = request.params
            self.states[request_id] = RequestState(
                request_id, None, request.prompt_token_ids, params, None, 0.0
            )
            delta = output_kind is RequestOutputKind.DELTA
            self.cursors[request_id] = DeltaCursor(params) if delta else None
        self.chars = 0

    def deliver(self, outputs: list[RequestOutput]) -> None:
        states = self.states
        cursors = self.cursors
        chars = 0
        for output in outputs:
            state = states[output.request_id]
            state.publish(output)
            state.receive.receive_nowait()
            seen = state.latest
            assert seen is not None
            cursor = cursors[output.request_id]
            if cursor is not None:
                seen = cursor.take(seen)
            # What a consumer reads: the text it is handed.
            chars += len(seen.outputs[0].text)
        self.chars += chars


def measure(
    num_seqs: int,
    steps: int,
    block_size: int,
    prompt_len: int,
    freeze: bool,
    output_kind: RequestOutputKind | None = None,
) -> dict:
    core = _ready_core(num_seqs, steps, block_size, prompt_len, output_kind)
    front_door = None if output_kind is None else _FrontDoor(core, output_kind)
    if freeze:
        gc.collect()
        gc.freeze()
    clock = time.process_time
    schedule = runner = update = outputs = delivery = 0.0
    try:
        for _ in range(steps):
            # The phases of EngineCore.step, timed one by one.
            t0 = clock()
            scheduled = core.scheduler.schedule()
            t1 = clock()
            result = core.runner.execute(scheduled)
            t2 = clock()
            changed: dict = {}
            core._update(scheduled, result, 0.0, changed)
            t3 = clock()
            step_outputs = [core._output(request, 0.0) for request in changed]
            t4 = clock()
            if front_door is not None:
                front_door.deliver(step_outputs)
            t5 = clock()
            assert len(step_outputs) == num_seqs
            schedule += t1 - t0
            runner += t2 - t1
            update += t3 - t2
            outputs += t4 - t3
            delivery += t5 - t4
    finally:
        if freeze:
            gc.unfreeze()
    per = 1e6 / (steps * num_seqs)
    core_us = (schedule + update + outputs) * per
    result = {
        "num_running": num_seqs,
        "gc_frozen": freeze,
        "steps": steps,
        "core_us": round(core_us, 3),
        "schedule_us": round(schedule * per, 3),
        "update_us": round(update * per, 3),
        "outputs_us": round(outputs * per, 3),
        "runner_us": round(runner * per, 3),
        "meets_target": core_us <= TARGET_US,
    }
    if front_door is not None and output_kind is not None:
        result["output_kind"] = output_kind.name
        result["front_door_us"] = round(delivery * per, 3)
        # A cumulative consumer is handed the whole text every step, a delta one
        # only the new characters.
        result["chars_handed_out"] = front_door.chars
    return result


def best_of_runs(
    num_seqs: int, steps: int, block_size: int, prompt_len: int, freeze: bool, repeats: int
) -> dict:
    runs = [measure(num_seqs, steps, block_size, prompt_len, freeze) for _ in range(repeats)]
    best = min(runs, key=lambda run: run["core_us"])
    return {
        **best,
        "repeats": repeats,
        "core_us_median": round(statistics.median(run["core_us"] for run in runs), 3),
    }


def compare_output_kinds(
    num_seqs: int,
    steps: int,
    block_size: int,
    prompt_len: int,
    repeats: int,
    kinds: list[RequestOutputKind],
) -> dict:
    """Each kind ``repeats`` times, interleaved (so that a change in the machine's load
    hits every kind alike), gc frozen; the ratio of each run pair's front-door time."""
    runs: dict[str, list[dict]] = {kind.name: [] for kind in kinds}
    for _ in range(repeats):
        for kind in kinds:
            runs[kind.name].append(measure(num_seqs, steps, block_size, prompt_len, True, kind))
    result: dict = {"num_running": num_seqs, "steps": steps, "repeats": repeats, "kinds": {}}
    for name, kind_runs in runs.items():
        result["kinds"][name] = {
            "front_door_us_best": min(r["front_door_us"] for r in kind_runs),
            "front_door_us_median": round(
                statistics.median(r["front_door_us"] for r in kind_runs), 3
            ),
            "core_us_median": round(statistics.median(r["core_us"] for r in kind_runs), 3),
            "chars_handed_out": kind_runs[0]["chars_handed_out"],
        }
    names = list(runs)
    if len(names) == 2:
        first, second = (runs[n] for n in names)
        ratios = [
            b["front_door_us"] / a["front_door_us"]
            for a, b in zip(first, second, strict=True)
            if a["front_door_us"] > 0
        ]
        if ratios:
            result[f"front_door_ratio_{names[1]}_over_{names[0]}_median"] = round(
                statistics.median(ratios), 3
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument(
        "--output-kinds",
        nargs="+",
        choices=[kind.name.lower() for kind in RequestOutputKind],
        default=[],
        help="instead of the core phases alone, compare these output kinds' front door",
    )
    args = parser.parse_args()
    if args.output_kinds:
        kinds = [RequestOutputKind[name.upper()] for name in args.output_kinds]
        comparisons = [
            compare_output_kinds(
                n, args.steps, args.block_size, args.prompt_len, args.repeats, kinds
            )
            for n in args.sizes
        ]
        print(
            json.dumps(
                {
                    "benchmark": "front door CPU time per request per step by output kind (us)",
                    "target_us": TARGET_US,
                    "python": platform.python_version(),
                    "load_average": os.getloadavg(),
                    "block_size": args.block_size,
                    "prompt_len": args.prompt_len,
                    "results": comparisons,
                },
                indent=2,
            )
        )
        return
    results = [
        best_of_runs(n, args.steps, args.block_size, args.prompt_len, freeze, args.repeats)
        for n in args.sizes
        for freeze in (False, True)
    ]
    print(
        json.dumps(
            {
                "benchmark": "engine core CPU time per running sequence per decode step (us)",
                "target_us": TARGET_US,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "block_size": args.block_size,
                "prompt_len": args.prompt_len,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
