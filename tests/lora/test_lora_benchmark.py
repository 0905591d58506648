"""benchmarks/lora.py runs end to end on a tiny model and prints its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lora.py"


def test_lora_benchmark_tiny_run_reports_every_system(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("lora_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["lora.py", "--tiny", "--requests", "4", "--output-len", "3", "--max-prompt", "40"]
    monkeypatch.setattr(sys, "argv", [*argv, "--rounds", "1", "--adapters", "2", "--rank", "4"])
    module.main()
    result = json.loads(capsys.readouterr().out)
    assert set(result["systems"]) == {"base", "one_adapter", "eight_adapters"}
    for system in result["systems"].values():
        assert system["generated_tokens"] == 4 * 3
    assert set(result["over_base"]) == {"one_adapter", "eight_adapters"}
    assert isinstance(result["target"]["met"], bool)
