"""Smoke test of benchmarks/distributed.py on a toy model (no timing asserted: the
machine running the tests is not the one to judge speed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.distributed.bench_helpers import load_benchmark

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def bench() -> Iterator[ModuleType]:
    threads = torch.get_num_threads()
    yield load_benchmark("distributed")
    # The in-process row sets torch's threads for this process.
    torch.set_num_threads(threads)


def test_rows_sum_their_repeats_and_ratios_pair_them(bench: ModuleType, tmp_path: Path) -> None:
    argv = ["--tiny", "--requests", "3", "--output-len", "4", "--repeats", "3"]
    argv += ["--systems", "in_process_2t", "engine_use_ray_2t", "--out", str(tmp_path / "o")]
    result = bench.main(argv)
    assert (tmp_path / "o").exists()
    for name in ("in_process_2t", "engine_use_ray_2t"):
        row = result["systems"][name]
        assert row["status"] == "ok", row
        assert [r["output_tokens"] for r in row["repeats"]] == [3 * 4] * 3
        assert row["output_tokens"] == 3 * 3 * 4
    paired = sorted(
        ray["output_tokens_per_s"] / local["output_tokens_per_s"]
        for ray, local in zip(
            result["systems"]["engine_use_ray_2t"]["repeats"],
            result["systems"]["in_process_2t"]["repeats"],
            strict=True,
        )
    )
    assert result["ratios"]["engine_use_ray_over_in_process"] == round(paired[1], 3)
