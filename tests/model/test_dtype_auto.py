"""dtype="auto" on the CPU: bfloat16 where the CPU multiplies it in hardware."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from corral.model import config
from corral.model.loader import resolve_dtype


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    flags: set[str] = {"avx2", "fma"}
    monkeypatch.setattr(config, "cpu_flags", lambda: frozenset(flags))
    config._log_auto_bfloat16.cache_clear()
    return flags


def checkpoint(dtype: str) -> SimpleNamespace:
    return SimpleNamespace(dtype=dtype)


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
def test_auto_runs_bfloat16_on_a_cpu_with_hardware_bfloat16(
    cpu_flags: set[str], flag: str, stored: str
) -> None:
    cpu_flags.add(flag)
    assert resolve_dtype("auto", checkpoint(stored), "cpu") == torch.bfloat16


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("float32", torch.float32), ("float16", torch.bfloat16), ("bfloat16", torch.bfloat16)],
)
def test_auto_keeps_the_checkpoint_dtype_without_hardware_bfloat16(
    cpu_flags: set[str], stored: str, expected: torch.dtype
) -> None:
    cpu_flags.add("avx512f")
    assert resolve_dtype("auto", checkpoint(stored), "cpu") == expected


def test_explicit_float32_stays_float32_on_a_bfloat16_cpu(cpu_flags: set[str]) -> None:
    cpu_flags.add("amx_bf16")
    assert resolve_dtype("float32", checkpoint("float32"), "cpu") == torch.float32


def test_auto_on_cuda_follows_the_checkpoint(cpu_flags: set[str]) -> None:
    cpu_flags.add("amx_bf16")
    assert resolve_dtype("auto", checkpoint("float32"), "cuda") == torch.float32


def test_the_bfloat16_choice_is_logged_once(
    cpu_flags: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    cpu_flags.add("avx512_bf16")
    with caplog.at_level(logging.INFO, logger="corral.model.config"):
        for _ in range(3):
            resolve_dtype("auto", checkpoint("float32"), "cpu")
    messages = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(messages) == 1
    assert "avx512_bf16" in messages[0] and "dtype='float32'" in messages[0]


def test_cpu_flags_reads_this_machine() -> None:
    # Every x86-64 Linux CPU reports sse2; elsewhere the set is empty, not an error.
    flags = config.cpu_flags()
    assert not flags or "sse2" in flags or "fp" in flags
