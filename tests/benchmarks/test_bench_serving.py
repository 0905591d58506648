"""Smoke tests of benchmarks/serving.py: the quick run end to end, and its arrivals.

No timing is asserted: the machine running the tests is not the one to judge speed.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "serving.py"
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_serving", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_against_launched_corral_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--launch", "corral", "--threads", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout)
    assert {"config", "machine", "versions", "servers", "target"} <= report.keys()
    server = report["servers"]["corral"]
    assert server["status"] == "ok"
    assert [row["request_rate"] for row in server["rates"]] == report["config"]["rates"]
    for row in server["rates"]:
        assert row["errors"] == 0, row["error_examples"]
        assert row["completed"] == report["config"]["num_requests"]
        # Every request produced exactly the tokens it asked for, from the prompt drawn.
        assert row["output_len_mismatches"] == 0
        assert row["prompt_len_mismatches"] == 0
        assert row["request_throughput"] > 0 and row["output_throughput"] > 0
        for metric in METRICS:
            assert {"mean", "median", "p99"} == row[metric].keys()
            assert all(value is not None and value >= 0 for value in row[metric].values())
    assert report["target"]["evaluated"] is False
    # Reported, not asserted: the budget the brief sets for the smoke run is 60 s.
    print(f"quick serving benchmark took {elapsed:.1f}s")


def test_arrivals_are_seeded_poisson_with_the_asked_rate() -> None:
    serving = _load_script()
    times = serving.arrival_times(20000, rate=4.0, burstiness=1.0, seed=1)
    assert times == serving.arrival_times(20000, rate=4.0, burstiness=1.0, seed=1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.25, rel=0.05)
    # Exponential gaps: the standard deviation equals the mean.
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert std == pytest.approx(mean, rel=0.05)
    assert serving.arrival_times(3, rate=math.inf, burstiness=1.0, seed=1) == [0.0, 0.0, 0.0]


def test_workload_prompts_have_their_drawn_token_counts() -> None:
    serving = _load_script()
    workload = serving.Workload(50, (32, 512), (64, 256), 32000, seed=0)
    requests = serving.sample_requests(workload)
    assert requests == serving.sample_requests(workload)
    for request in requests:
        assert 32 <= request.prompt_len <= 512 and 64 <= request.output_len <= 256
        assert len(request.prompt.split()) == request.prompt_len
