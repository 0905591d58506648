"""The ``corral`` command in-process: ``generate`` streams the same text the engine makes,
and bad arguments fail before any model is loaded, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.default_model import DEFAULT_SERVED_NAME, default_model_path
from corral.entrypoints.cli import _default_names, _engine_args, build_parser, main
from corral.llm import LLM
from corral.sampling_params import SamplingParams

ENGINE = [
    "--dtype",
    "float32",
    "--num-kv-blocks",
    "64",
    "--block-size",
    "8",
    "--max-model-len",
    "256",
]


def test_generate_streams_the_greedy_completion(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "generate",
        str(tiny_model),
        "Once upon a time",
        "--max-tokens",
        "10",
        "--temperature",
        "0",
    ]
    assert main([*argv, "--ignore-eos", *ENGINE]) == 0
    printed = capsys.readouterr().out
    llm = LLM(str(tiny_model), dtype="float32", num_kv_blocks=64, block_size=8, max_model_len=256)
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    expected = llm.generate("Once upon a time", params, use_tqdm=False)[0].outputs[0].text
    assert printed == expected + "\n"


def test_generate_without_a_model_uses_the_embedded_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["generate", "Once upon a time", "--max-tokens", "12", "--temperature", "0"]
    assert main([*argv, "--num-kv-blocks", "64"]) == 0
    printed = capsys.readouterr().out
    llm = LLM(default_model_path(), num_kv_blocks=64)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    expected = llm.generate("Once upon a time", params, use_tqdm=False)[0].outputs[0].text
    assert printed == expected + "\n"
    assert expected.strip()


def test_generate_defaults_to_a_whole_story_not_sixteen_tokens() -> None:
    namespace = build_parser().parse_args(["generate", "Once upon a time"])
    assert namespace.max_tokens == 256


def test_serve_without_a_model_serves_the_embedded_default_as_storyteller() -> None:
    namespace = build_parser().parse_args(["serve", "--port", "0"])
    assert namespace.model is None
    assert _default_names(namespace) == (DEFAULT_SERVED_NAME,)
    assert _engine_args(namespace).model == default_model_path()


def test_bad_engine_argument_is_reported_with_its_field(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tiny_model), "--block-size", "0"]) == 2
    assert "block_size must be a positive integer" in capsys.readouterr().err


def test_bad_server_argument_is_reported_with_its_field(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tiny_model), "--port", "70000"]) == 2
    assert "port must be in [0, 65535]" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "m", "--no-such-option"])
    assert info.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_bench_runs_the_benchmark_script_with_the_remaining_arguments(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "throughput", "--help"]) == 0
    assert "usage: throughput.py" in capfd.readouterr().out
