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


def _row(rate: float | str, p99_ttft_ms: float, errors: int = 0) -> dict:
    stats = {"mean": p99_ttft_ms / 2, "median": p99_ttft_ms / 2, "p99": p99_ttft_ms}
    return {"request_rate": rate, "errors": errors, "ttft_ms": stats}


def test_target_compares_at_the_peers_highest_rate_under_two_seconds() -> None:
    serving = _load_script()
    servers = {
        "corral": {"rates": [_row(1.0, 400), _row(2.0, 600), _row(3.0, 1900), _row(4.0, 2500)]},
        "transformers": {"rates": [_row(1.0, 1000), _row(2.0, 2100), _row(3.0, 900, errors=1)]},
    }
    target = serving.evaluate_target(servers)
    assert target["peer_max_rate"] == 1.0
    assert target["corral_max_rate"] == 3.0
    assert target["p99_ttft_ratio_at_peer_max_rate"] == pytest.approx(0.4)
    assert target["p99_ttft_target_met"] is True
    assert target["sustained_rate_ratio"] == pytest.approx(3.0)
    assert target["sustained_rate_target_met"] is True
    assert target["corral_max_rate_is_lower_bound"] is False


def test_merging_runs_pools_rates_in_order_and_rejects_a_rate_measured_twice() -> None:
    serving = _load_script()

    def run(rates: list[float]) -> dict:
        rows = [_row(rate, 100 * rate) for rate in rates]
        return {
            "config": {"rates": rates, "workload": {"seed": 0}},
            "servers": {"corral": {"rates": rows}, "transformers": {"rates": rows}},
        }

    merged = serving.merge_results([run([0.5, 2.0]), run([1.0])])
    assert merged["config"]["rates"] == [0.5, 1.0, 2.0]
    assert [r["request_rate"] for r in merged["servers"]["corral"]["rates"]] == [0.5, 1.0, 2.0]
    assert merged["target"]["peer_max_rate"] == 2.0
    with pytest.raises(SystemExit, match="measured twice"):
        serving.merge_results([run([0.5]), run([0.5])])
