"""A newcomer's mistakes with ``corral``: each ends in one clear line and the right exit
status, never a traceback (issue 12). Every test runs the console script as a user does."""

from __future__ import annotations

import importlib.metadata
import os
import select
import signal
import socket
import subprocess
import time

import pytest

from corral.default_model import default_model_path
from corral.entrypoints.cli import _lora_module
from tests.cli.cli_helpers import assert_one_line_error, free_port, run_corral, start_corral

# A short context keeps the embedded model's runs to a fraction of a second.
SHORT = ("--max-model-len", "32", "--temperature", "0")


def read_until(proc: subprocess.Popen[bytes], stream: str, wanted: bytes, timeout: float) -> bytes:
    """Bytes of ``proc``'s stdout or stderr, read as they come until ``wanted`` shows."""
    pipe = getattr(proc, stream)
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} on {stream} after {timeout}s: {seen!r}"
        ready, _, _ = select.select([pipe], [], [], left)
        if ready:
            chunk = os.read(pipe.fileno(), 4096)
            assert chunk, f"{stream} closed before {wanted!r}: {seen!r}"
            seen += chunk
    return seen


def interrupt(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out.decode(), err.decode()


# Item 1: Ctrl-C.


def test_ctrl_c_while_streaming_keeps_the_text_and_exits_130() -> None:
    # ignore_eos and no max_tokens: the story runs on to the context length (512).
    proc = start_corral("generate", "Once upon a time", "--max-tokens", "None", "--ignore-eos")
    first = read_until(proc, "stdout", b" ", timeout=120)
    status, rest, err = interrupt(proc)
    assert status == 130, err
    assert "Traceback" not in err
    assert err.splitlines() == ["corral generate: interrupted"]
    printed = first.decode() + rest
    assert printed.strip() and printed.endswith("\n")


def test_ctrl_c_while_loading_exits_130_with_one_line() -> None:
    # The loader's INFO line is printed from the loading thread, before the engine starts.
    proc = start_corral("generate", "Once upon a time", "--log-level", "INFO", "--max-tokens", "8")
    before = read_until(proc, "stderr", b" loaded ", timeout=120).decode()
    status, _, err = interrupt(proc)
    assert status == 130, before + err
    assert "Traceback" not in before + err
    after = (before + err).split(" loaded ", 1)[1].splitlines()[1:]
    # Nothing but our line after the interrupt: the loader does not go on logging.
    assert [line for line in after if "KV cache" not in line] == ["corral generate: interrupted"]


# Item 2: a port in use.


def test_serve_on_a_port_in_use_fails_at_once_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        result = run_corral("serve", "--port", str(port), "--log-level", "INFO")
        elapsed = time.monotonic() - start
    assert_one_line_error(result, 1, f"port {port} on 127.0.0.1 is in use")
    # Before loading: the loader never logged, and no model load time was spent.
    assert "loaded" not in result.stderr and elapsed < 30


# Item 3: a model that is not there.


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_a_model_id_not_on_this_machine_is_one_line(command: str) -> None:
    args = ["--port", str(free_port())] if command == "serve" else ["Hello", "--max-tokens", "4"]
    result = run_corral(command, "meta-llama/Llama-3.2-1B", *args)
    assert_one_line_error(result, 2, "meta-llama/Llama-3.2-1B")


# Item 4: which argument is the model.


@pytest.mark.parametrize("model", ["/nonexistent/model", default_model_path(), "org/model-id"])
def test_a_lone_model_argument_asks_for_a_prompt(model: str) -> None:
    result = run_corral("generate", model)
    assert_one_line_error(result, 2, f"{model!r} names a model, but no prompt was given")


def test_a_model_then_a_prompt_generates() -> None:
    result = run_corral("generate", default_model_path(), "Once upon a time", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stderr == ""


# Items 5 and 6: --max-tokens as the help describes it, and a capped request said so.


def test_max_tokens_none_runs_to_the_context_length() -> None:
    result = run_corral(
        "generate", "Once upon a time", "--max-tokens", "None", "--ignore-eos", *SHORT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stderr == ""


def test_max_tokens_beyond_the_context_is_reported_once() -> None:
    result = run_corral(
        "generate", "Once upon a time", "--max-tokens", "2000", "--ignore-eos", *SHORT
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("corral generate: max_tokens 2000 was capped to "), line
    assert "context length is 32 tokens" in line


# Item 7: --log-level and usage errors.


def test_an_unknown_log_level_is_a_usage_error() -> None:
    result = run_corral("--log-level", "LOUD", "generate", "Hello")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'LOUD'" in result.stderr


def test_log_level_is_accepted_after_the_subcommand() -> None:
    result = run_corral("generate", "Once upon a time", "--log-level", "info", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert "INFO corral.model" in result.stderr


def test_a_subcommand_usage_error_shows_the_subcommand_usage() -> None:
    for command, args in (("generate", ["Hello"]), ("serve", [])):
        result = run_corral(command, *args, "--no-such-flag")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"usage: corral {command} "), result.stderr
        assert "unrecognized arguments: --no-such-flag" in result.stderr


# Item 11: help text.


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_help_is_plain_text_and_offers_only_what_works(command: str) -> None:
    result = run_corral(command, "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "``" not in text and "`" not in text
    assert "Normalized" not in text and "(see " not in text
    for distributed in (
        "--tensor-parallel-size",
        "--worker-use-ray",
        "--engine-use-ray",
        "--data-parallel-size",
        "--ray-address",
    ):
        assert distributed in text
    assert "--log-level" in text


def test_served_model_name_help_names_the_embedded_default() -> None:
    text = " ".join(run_corral("serve", "--help").stdout.split())
    assert "or 'storyteller' for the embedded model" in text


# Issue 18: the version.


def test_version_is_the_package_metadata_version() -> None:
    result = run_corral("--version")
    assert result.returncode == 0
    assert result.stdout == f"corral {importlib.metadata.version('corral')}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sql=/adapters/sql", ("sql", "/adapters/sql")),
        ('{"name": "sql", "path": "/adapters/sql"}', ("sql", "/adapters/sql")),
    ],
)
def test_lora_modules_take_name_path_and_vllms_json_form(
    text: str, expected: tuple[str, str]
) -> None:
    assert _lora_module(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sql", "expected NAME=PATH"),
        ("=/x", "expected NAME=PATH"),
        ('{"name": "sql"', "not valid JSON"),
        ('{"name": "sql"}', "non-empty string name and path"),
        ('{"name": "sql", "path": "/x", "base_model_name": "m"}', "base_model_name"),
    ],
)
def test_bad_lora_modules_are_value_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _lora_module(text)
