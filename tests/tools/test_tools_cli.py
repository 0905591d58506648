"""The tool-calling options of ``corral serve`` (``--tool-call-parser``,
``--enable-auto-tool-choice``): refused before anything loads when inconsistent."""

from __future__ import annotations

import pytest

from corral.entrypoints.cli import build_parser, main
from corral.entrypoints.serve import ServerSettings


def test_the_flags_reach_the_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerSettings] = []
    monkeypatch.setattr(
        "corral.entrypoints.cli.run_server", lambda settings, args: seen.append(settings)
    )
    argv = ["serve", "--port", "0", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert main(argv) == 0
    assert (seen[0].tool_call_parser, seen[0].enable_auto_tool_choice) == ("hermes", True)


def test_tools_are_off_by_default() -> None:
    namespace = build_parser().parse_args(["serve"])
    assert (namespace.tool_call_parser, namespace.enable_auto_tool_choice) == (None, False)


def test_auto_tool_choice_without_a_parser_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--port", "0", "--enable-auto-tool-choice"]) == 2
    assert "needs a tool_call_parser" in capsys.readouterr().err


def test_an_unknown_parser_is_a_usage_error_listing_the_parsers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--tool-call-parser", "nope"])
    assert info.value.code == 2
    assert "hermes" in capsys.readouterr().err


def test_server_settings_check_the_parser_name() -> None:
    with pytest.raises(ValueError, match="unknown parser 'nope'"):
        ServerSettings(tool_call_parser="nope")
