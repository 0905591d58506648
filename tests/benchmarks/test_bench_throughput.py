"""Smoke test of benchmarks/throughput.py: the quick path on a toy model, end to end.

No timing is asserted: the machine running the tests is not the one to judge speed.
Only that every system ran, produced every token, and that the report holds the
keys and positive numbers the docs and the plot read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "throughput.py"
EXTERNAL = {"llamacpp_f32", "llamacpp_bf16", "openvino_default", "openvino_f32"}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_tiny_run_reports_every_system(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    png = tmp_path / "throughput.png"
    # An empty peers cache: the external peers are reported, not run. The run
    # takes about 12 s of CPU; the timeout is for a machine shared with other jobs
    # (3 minutes of wall time were measured beside them).
    env = os.environ | {"CORRAL_PEERS_CACHE": str(tmp_path / "no-peers")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tiny", "--requests", "8",
         "--output-len", "8", "--min-prompt", "8", "--max-prompt", "64",
         "--decode-batch", "4", "--gemm-size", "256", "--threads", "1",
         "--out", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout)
    assert png.stat().st_size > 0
    assert {"config", "machine", "versions", "systems", "decode_only", "flops", "summary"} <= (
        report.keys()
    )
    assert report["config"]["torch_threads"] == 1
    systems = report["systems"]
    # dtype="auto" is bfloat16 on a CPU with hardware bfloat16; float32 then runs beside it.
    default_dtype = report["config"]["corral_dtype"]
    assert systems["corral"]["dtype"] == default_dtype
    beside = {"corral_float32"} if default_dtype != "float32" else set()
    assert set(systems) == {"corral", "generate_bs8", "generate_bs16", "generate_bs32",
                            "generate_batch"} | beside | EXTERNAL  # fmt: skip
    for name in EXTERNAL:
        assert systems[name]["status"] == "not installed", systems[name]
    assert report["summary"]["external_peer_status"] == dict.fromkeys(EXTERNAL, "not installed")
    expected_tokens = 8 * 8
    for name, system in systems.items():
        if name in EXTERNAL:
            continue
        assert system["status"] == "ok", (name, system)
        assert system["output_tokens"] == expected_tokens, name
        for key in ("elapsed_s", "output_tokens_per_s", "total_tokens_per_s", "mfu"):
            assert system[key] > 0, (name, key)

    for key in ("decode_only", "decode_only_float32") if beside else ("decode_only",):
        decode = report[key]
        assert decode["status"] == "ok", decode
        assert decode["batch"] == 4
        assert decode["steps"] > 0 and decode["output_tokens_per_s"] > 0 and decode["mfu"] > 0
        assert decode["share_of_gemm_rate_at_batch_rows"] > 0

    waste = systems["corral"]["kv_waste"]
    assert waste["steady_state_steps"] > 0
    # Less than one block per running sequence can be empty.
    assert 0 <= waste["steady_state"] < 1

    flops = report["flops"]
    for when in ("gemm_before", "gemm_after"):
        assert set(flops[when]) == {"float32", "bfloat16", "float32_rows4", "bfloat16_rows4"}
        for rate in flops[when].values():
            assert rate["median_flops_per_s"] > 0
    for name, system in systems.items():
        if name not in EXTERNAL:
            assert system["mfu_against"] == f"{system.get('dtype', 'float32')} GEMM", name
    assert flops["attention_flops"] > 0
    params = flops["params"]
    assert params["non_embedding_with_lm_head"] > params["non_embedding_without_lm_head"] > 0

    summary = report["summary"]
    assert summary["best_static_generate"] in systems
    for key in ("corral_over_best_static_generate", "corral_over_generate_batch", "corral_mfu",
                "corral_decode_tokens_per_s", "kv_waste_steady_state"):  # fmt: skip
        assert summary[key] is not None, key


def test_attention_flops_counts_causal_pairs() -> None:
    module = load_script()
    shape = {"hidden_size": 8, "num_hidden_layers": 2}
    # Prompt of 3: 1 + 2 + 3 pairs; 3 outputs: 2 fed-back tokens at contexts 4, 5.
    assert module.attention_flops(shape, [3], 3) == 4 * 8 * 2 * (6 + 4 + 5)
    params = {"non_embedding_without_lm_head": 10, "non_embedding_with_lm_head": 15}
    assert module.useful_flops(params, prompt_tokens=4, generated=2) == 2 * 4 * 10 + 2 * 2 * 15


def run_peers(module: ModuleType, tmp_path: Path, **kwargs: object) -> dict[str, dict]:
    systems: dict[str, dict] = {}
    module.run_external_peers(
        systems, tmp_path, [[3, 4, 5]], [[6, 7]], 2, budget=64, max_model_len=32, **kwargs
    )
    return systems


def test_peer_without_setup_is_reported_not_installed_with_the_setup_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_PEERS_CACHE", str(tmp_path / "empty"))
    systems = run_peers(load_script(), tmp_path)
    assert set(systems) == EXTERNAL
    for name, system in systems.items():
        assert system["status"] == "not installed", system
        peer = name.split("_")[0]
        assert f"benchmarks/peers/setup_{peer}.sh" in system["reason"]


def test_peer_whose_setup_names_a_missing_venv_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    (cache / "openvino").mkdir(parents=True)
    (cache / "openvino" / "ready").write_text(
        f"openvino_genai=2026.4.1.0\npython={tmp_path}/gone/python\noptimum_cli={tmp_path}\n"
    )
    monkeypatch.setenv("CORRAL_PEERS_CACHE", str(cache))
    systems = run_peers(load_script(), tmp_path)
    for name in ("openvino_default", "openvino_f32"):
        assert systems[name]["status"] == "not installed"
        assert "gone/python, which is missing" in systems[name]["reason"]


def test_installed_peer_that_fails_is_reported_failed_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A setup that names a llama.cpp folder without the converter: the conversion
    # step fails, and the report says so for each llama.cpp system.
    cache = tmp_path / "cache"
    (cache / "llamacpp").mkdir(parents=True)
    (cache / "llamacpp" / "ready").write_text(
        f"version=0\npython={sys.executable}\nllama_cpp_dir={tmp_path}\nlib_path={tmp_path}\n"
    )
    monkeypatch.setenv("CORRAL_PEERS_CACHE", str(cache))
    systems = run_peers(load_script(), tmp_path)
    for name in ("llamacpp_f32", "llamacpp_bf16"):
        assert systems[name]["status"] == "failed", systems[name]
        assert "convert_hf_to_gguf" in systems[name]["error"]
    assert systems["openvino_f32"]["status"] == "not installed"


def test_skipped_peers_say_why(tmp_path: Path) -> None:
    systems = run_peers(load_script(), tmp_path, skip_reason="--no-external-peers")
    skipped = {"status": "skipped", "reason": "--no-external-peers"}
    assert systems == {name: skipped for name in EXTERNAL}
