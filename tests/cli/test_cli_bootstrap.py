"""scripts/bootstrap says what it does and picks the torch build that fits the machine;
the package metadata builds without deprecation warnings (issue 12, items 9 and 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = str(ROOT / "scripts" / "bootstrap")
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def torch_source(env: dict[str, str]) -> str:
    result = subprocess.run(
        [BOOTSTRAP, "--torch-source"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def bare_env(tmp_path: Path, *, gpu: bool) -> dict[str, str]:
    """A machine whose pip has no sources of its own, with or without nvidia-smi."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_INDEX"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100'\n")
        fake.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return env


def test_without_a_gpu_or_pip_sources_the_cpu_build_is_chosen(tmp_path: Path) -> None:
    assert torch_source(bare_env(tmp_path, gpu=False)) == CPU_INDEX


def test_with_a_gpu_the_public_index_build_is_chosen(tmp_path: Path) -> None:
    assert torch_source(bare_env(tmp_path, gpu=True)) == ""


def test_pip_sources_of_this_machine_decide(tmp_path: Path) -> None:
    env = bare_env(tmp_path, gpu=False)
    env["PIP_FIND_LINKS"] = str(tmp_path)
    assert torch_source(env) == ""


def test_torch_index_url_overrides_the_choice(tmp_path: Path) -> None:
    env = {**bare_env(tmp_path, gpu=True), "TORCH_INDEX_URL": "https://example.invalid/cu128"}
    assert torch_source(env) == "--index-url https://example.invalid/cu128"


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="bootstrap manages the checkout's .venv; this interpreter is another one",
)
def test_bootstrap_says_what_it_does() -> None:
    # .venv is set up (this test runs in it): a run installs nothing, unless pyproject.toml
    # changed since the last install, and then it says so step by step.
    result = subprocess.run([BOOTSTRAP], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("[bootstrap] ")]
    assert steps[0] in (
        "[bootstrap] .venv is up to date (torch and corral import)",
        "[bootstrap] upgrading pip",
    ), result.stdout
    if steps[0] == "[bootstrap] upgrading pip":
        assert steps[1].startswith("[bootstrap] installing torch==2.13.0 ")
        assert steps[2].startswith("[bootstrap] installing corral")
    assert "[bootstrap] building the native extension (or finding it in the cache)" in steps
    assert steps[-1].startswith("[bootstrap] done")


def test_the_package_metadata_loads_without_deprecation_warnings() -> None:
    # setuptools deprecated `license = { text = ... }` for an SPDX string.
    code = (
        "from setuptools.config.pyprojecttoml import apply_configuration\n"
        "from setuptools.dist import Distribution\n"
        "dist = apply_configuration(Distribution(), 'pyproject.toml')\n"
        "print(dist.metadata.license_expression)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Apache-2.0"
