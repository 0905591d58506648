"""The external peers of benchmarks/throughput.py: llama.cpp and OpenVINO GenAI.

Each peer lives in a venv of its own, set up once by a script of this folder into
``$CORRAL_PEERS_CACHE`` (default ``~/.cache/corral-peers``), and runs in a process
of its own (a driver of this folder) on the benchmark's checkpoint and token ids.
A peer whose setup is missing or broken is reported as "not installed" with the
reason and the command that installs it; one that fails while running is
reported as "failed" by the caller. Neither is ever left out of the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE_ENV = "CORRAL_PEERS_CACHE"
# Per peer process: conversion or export plus the run itself.
TIMEOUT_S = 3600


class PeerNotInstalled(Exception):
    """The peer's setup is missing or does not work; the message says what to run."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "corral-peers")


def read_ready(peer: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The ``ready`` file the setup script of ``peer`` writes last, checked.

    Raises:
        PeerNotInstalled: when the file is missing, lacks a key, or names a missing path.
    """
    script = f"benchmarks/peers/setup_{peer}.sh"
    path = cache_dir() / peer / "ready"
    if not path.is_file():
        raise PeerNotInstalled(f"no {path}: run {script}")
    ready = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    for key in keys:
        if key not in ready:
            raise PeerNotInstalled(f"{path} lacks {key!r}: run {script} again")
        if (
            key in ("python", "llama_cpp_dir", "lib_path", "optimum_cli")
            and not Path(ready[key]).exists()
        ):
            raise PeerNotInstalled(f"{path} names {ready[key]}, which is missing: run {script}")
    return ready


def run_process(
    command: list[str], what: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> str:
    """Run ``command``; its stdout, or a RuntimeError carrying the end of its stderr."""
    print(f"[throughput]   {what}", file=sys.stderr, flush=True)
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=os.environ | (env or {})
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise RuntimeError(f"{what} exited with {proc.returncode}: " + " | ".join(tail))
    return proc.stdout


def run_driver(
    python: str,
    driver: str,
    spec: dict[str, Any],
    work: Path,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One driver run in the peer's venv; the JSON object it prints last."""
    spec_path = work / f"{driver}.{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    out = run_process([python, str(HERE / driver), str(spec_path)], f"{driver} ({python})", env)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{driver} printed no JSON result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def llamacpp(
    model_dir: Path,
    work: Path,
    *,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    threads: int,
    budget: int,
    max_model_len: int,
) -> dict[str, Callable[[], dict[str, Any]]]:
    """The llama.cpp systems (f32 and bf16 GGUF), each a callable that runs it.

    Raises:
        PeerNotInstalled: when setup_llamacpp.sh has not run (or broke).
    """
    ready = read_ready("llamacpp", ("python", "llama_cpp_dir", "lib_path", "version"))

    def system(outtype: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            gguf = work / f"model-{outtype}.gguf"
            if not gguf.exists():
                start = time.perf_counter()
                run_process(
                    [sys.executable, str(HERE / "convert_gguf.py"), ready["llama_cpp_dir"],
                     str(model_dir), str(gguf), outtype],
                    f"convert_hf_to_gguf --outtype {outtype}",
                )  # fmt: skip
                print(
                    f"[throughput]   converted in {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                )
            spec = {
                "model": str(gguf),
                "prompts": prompts,
                "warmup": warmup,
                "output_len": output_len,
                "threads": threads,
                "n_batch": budget,
                # llama.cpp's cap on sequences (LLAMA_MAX_SEQ); corral's default is 256 too.
                "max_parallel": 256,
                "ctx_per_seq": max_model_len,
            }
            # The bindings load the libllama that setup_llamacpp.sh built.
            env = {"LLAMA_CPP_LIB_PATH": ready["lib_path"]}
            out = run_driver(ready["python"], "llamacpp_driver.py", spec, work, env)
            out["config"] |= {"gguf_type": outtype, "setup_version": ready["version"]}
            return out

        return run

    return {"llamacpp_f32": system("f32"), "llamacpp_bf16": system("bf16")}


def openvino(
    model_dir: Path,
    work: Path,
    *,
    prompts: list[list[int]],
    warmup: list[list[int]],
    output_len: int,
    threads: int,
    budget: int,
) -> dict[str, Callable[[], dict[str, Any]]]:
    """The OpenVINO GenAI systems (default precision and f32), each a callable.

    Raises:
        PeerNotInstalled: when setup_openvino.sh has not run (or broke).
    """
    ready = read_ready("openvino", ("python", "optimum_cli", "openvino_genai"))
    exported = work / "openvino-model"

    def system(precision: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            if not (exported / "openvino_model.xml").exists():
                # fp32 weights: the checkpoint's own values (optimum would otherwise
                # compress larger models to int8).
                start = time.perf_counter()
                run_process(
                    [ready["optimum_cli"], "export", "openvino", "--model", str(model_dir),
                     "--task", "text-generation-with-past", "--weight-format", "fp32",
                     str(exported)],
                    "optimum-cli export openvino --task text-generation-with-past",
                )  # fmt: skip
                print(
                    f"[throughput]   exported in {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                )
            spec = {
                "model_dir": str(exported),
                "prompts": prompts,
                "warmup": warmup,
                "output_len": output_len,
                "threads": threads,
                "max_num_batched_tokens": budget,
                "max_num_seqs": 256,
                "precision": precision,
            }
            return run_driver(ready["python"], "openvino_driver.py", spec, work)

        return run

    return {"openvino_default": system("default"), "openvino_f32": system("f32")}
