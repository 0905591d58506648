"""Smoke test of benchmarks/profile_step.py on a toy model, end to end.

No timing is asserted; only that both step kinds are profiled, that every op lands
in a named category, and that the shares the docs quote add up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "profile_step.py"


def test_tiny_run_splits_prefill_and_decode_into_phases_and_ops(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--requests", "4", "--output-len", "4",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())

    for kind in ("prefill", "decode"):
        phases = result["timed"]["phases"][kind]
        assert phases["steps"] > 0
        assert sum(phases["share"].values()) == pytest.approx(1.0, abs=0.01)
        ops = result["profiled"]["ops"][kind]
        assert sum(ops["share"].values()) == pytest.approx(1.0, abs=0.01)
        # Every projection of the Llama is recognised by its weight shape.
        for gemm in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
            assert f"gemm:{gemm}" in ops["ms"], (kind, sorted(ops["ms"]))
        assert "attention" in ops["ms"]
        overhead = result["forward_python_overhead"][kind]
        assert 0.0 <= overhead["python_and_dispatch_share_of_step"] <= 1.0
    # Decode steps compute one token per sequence: 4 requests x 3 fed-back tokens.
    assert result["timed"]["phases"]["decode"]["tokens"] == 4 * 3
