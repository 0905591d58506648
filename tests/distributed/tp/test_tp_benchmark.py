"""Smoke test of benchmarks/distributed_tp.py's rows on a toy model (no timing asserted:
the machine running the tests is not the one to judge speed)."""

from __future__ import annotations

from pathlib import Path

from tests.distributed.bench_helpers import load_benchmark


def test_rows_report_both_systems_and_the_collectives(tmp_path: Path) -> None:
    bench = load_benchmark("distributed_tp")
    folder = tmp_path / "model"
    bench.build_model(folder, bench.TINY_MODEL, seed=0)
    prompts = bench.workload(4, bench.TINY_MODEL["vocab_size"], 8, 40, seed=0)
    warmup = bench.workload(1, bench.TINY_MODEL["vocab_size"], 8, 40, seed=1)
    rows = bench.tensor_parallel_rows(folder, prompts, warmup, output_len=6)
    single, parallel = rows["in_process_2_threads"], rows["tp2_1_thread_mp"]
    assert single["output_tokens"] == parallel["output_tokens"] == 4 * 6
    assert parallel["same_tokens_as_in_process"] is True
    calls = parallel["collectives"]
    # One gather per sampling step; per step one all-reduce after the embedding and
    # two per layer (2 layers).
    assert calls["gather"] >= 6
    assert calls["allreduce"] >= 5 * calls["gather"]
    assert 0.0 < parallel["collective_share"] < 1.0
