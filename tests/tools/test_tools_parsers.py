"""Tool-call parsers on their own: the Hermes format whole and streamed, the readers of
forced tool choices, and the parser registry."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.entrypoints.tool_parsers import (
    HermesToolParser,
    ToolCallStream,
    collect,
    get_tool_parser,
    tool_parser_names,
)
from corral.entrypoints.tool_parsers.base import Delta, ExtractedToolCalls
from corral.entrypoints.tool_parsers.forced import (
    NamedCallStream,
    RequiredCallsStream,
    extract_named,
    extract_required,
)
from corral.sampling_params import SamplingParams

PARSER = HermesToolParser()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
arguments = st.dictionaries(st.text(), json_values, max_size=4)
names = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


def streamed(stream: ToolCallStream, text: str, cuts: list[int]) -> ExtractedToolCalls:
    """What a client rebuilds when ``text`` arrives cut at ``cuts``."""
    deltas: list[Delta] = []
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    for start, end in itertools.pairwise(bounds):
        deltas += stream.feed(text[start:end])
    deltas += stream.finish()
    return collect(deltas)


def calls_of(result: ExtractedToolCalls) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in result.tool_calls]


def test_hermes_reads_calls_and_keeps_the_text_around_them() -> None:
    text = (
        "Let me look.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    result = PARSER.extract(text)
    assert result.content == "Let me look.\n"
    assert calls_of(result) == [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})]
    assert result.tool_calls[0].arguments == '{"city": "Paris", "days": 2}'
    assert len({c.id for c in result.tool_calls}) == 2


def test_hermes_without_calls_is_all_content() -> None:
    result = PARSER.extract("Once upon a time <tool")
    assert result == ExtractedToolCalls("Once upon a time <tool", [])


@pytest.mark.parametrize(
    "block",
    [
        '{"name": "f"}',  # no arguments
        '{"name": "f", "arguments": "a=1"}',  # arguments not an object
        '{"name": "", "arguments": {}}',  # no name
        "[1, 2]",
        "not json at all",
    ],
)
def test_a_malformed_call_stays_content_whole_and_streamed(block: str) -> None:
    text = f"Hi <tool_call>{block}</tool_call> there"
    assert PARSER.extract(text) == ExtractedToolCalls(text, [])
    assert streamed(PARSER.stream(), text, [3, 5, 17]) == ExtractedToolCalls(text, [])


def test_a_call_that_breaks_after_its_name_was_streamed_stays_a_call_in_the_stream() -> None:
    # A stream cannot take back a call it announced (see the hermes module docstring).
    text = 'Hi <tool_call>{"name": "f", "arguments": {"a": 1}</tool_call> there'
    assert PARSER.extract(text) == ExtractedToolCalls(text, [])
    rebuilt = streamed(PARSER.stream(), text, [3, 5, 17])
    assert rebuilt.content == "Hi  there"
    assert calls_of(rebuilt) == [("f", {"a": 1})]


def test_an_unclosed_last_call_counts_when_its_json_is_complete() -> None:
    result = PARSER.extract('<tool_call>\n{"name": "f", "arguments": {"x": [1]}}\n')
    assert calls_of(result) == [("f", {"x": [1]})]
    assert result.content is None


def test_other_keys_are_ignored() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}, "id": 7}</tool_call>'
    assert calls_of(PARSER.extract(text)) == [("f", {"a": 1})]
    assert calls_of(streamed(PARSER.stream(), text, [20])) == [("f", {"a": 1})]


def test_keys_in_another_order_are_read_and_sent_whole() -> None:
    text = '<tool_call>{"arguments": {"b": 2}, "name": "g"}</tool_call>'
    assert calls_of(PARSER.extract(text)) == [("g", {"b": 2})]
    assert calls_of(streamed(PARSER.stream(), text, [4, 20])) == [("g", {"b": 2})]


def test_a_stream_announces_a_call_before_its_arguments_end() -> None:
    stream = PARSER.stream()
    deltas = stream.feed('Ok<tool_call>{"name": "get_weather", "arguments": {"city": "Pa')
    assert deltas[0] == "Ok"
    head = deltas[1]
    assert not isinstance(head, str)
    assert (head.index, head.name, head.arguments) == (0, "get_weather", "")
    assert head.id is not None
    assert [d.arguments for d in deltas[2:] if not isinstance(d, str)] == ['{"city": "Pa']
    rest = stream.feed('ris"}}</tool_call>') + stream.finish()
    assert [d.arguments for d in rest if not isinstance(d, str)] == ['ris"}']
    assert stream.num_calls == 1


def test_a_partial_open_tag_is_held_back_until_it_is_decided() -> None:
    stream = PARSER.stream()
    assert stream.feed("a <tool_") == ["a "]
    assert stream.feed("box") == ["<tool_box"]


@given(
    before=st.text(),
    calls=st.lists(st.tuples(names, arguments), max_size=3),
    after=st.text(),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    ensure_ascii=st.booleans(),
)
def test_any_json_arguments_round_trip_through_the_streamed_deltas(
    before: str,
    calls: list[tuple[str, dict[str, Any]]],
    after: str,
    cuts: list[int],
    ensure_ascii: bool,
) -> None:
    if "<tool_call>" in before + after or "</tool_call>" in json.dumps(calls):
        return
    blocks = "".join(
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": args}, ensure_ascii=ensure_ascii)
        + "\n</tool_call>\n"
        for name, args in calls
    )
    text = before + blocks + after
    whole = PARSER.extract(text)
    assert calls_of(whole) == [(name, args) for name, args in calls]
    if calls:
        # Whitespace-only text between and around the blocks is not content.
        kept = (before if before.strip() else "") + ("\n" + after if after.strip() else "")
        assert whole.content == (kept or None)
    rebuilt = streamed(PARSER.stream(), text, cuts)
    assert rebuilt.content == whole.content
    assert [(c.name, c.arguments) for c in rebuilt.tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]


@given(
    calls=st.lists(st.tuples(names, arguments), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_required_calls_round_trip_whole_and_streamed(
    calls: list[tuple[str, dict[str, Any]]], cuts: list[int]
) -> None:
    text = json.dumps([{"name": name, "parameters": args} for name, args in calls])
    whole = extract_required(text)
    assert whole.content is None
    assert calls_of(whole) == calls
    rebuilt = streamed(RequiredCallsStream(), text, cuts)
    assert [(c.name, c.arguments) for c in rebuilt.tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]


def test_a_cut_short_required_answer_is_content() -> None:
    text = '[{"name": "f", "parameters": {"a": '
    assert extract_required(text) == ExtractedToolCalls(text, [])


@given(args=arguments, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_a_named_call_streams_its_arguments_text(args: dict[str, Any], cuts: list[int]) -> None:
    text = json.dumps(args)
    rebuilt = streamed(NamedCallStream("f"), text, cuts)
    assert [(c.name, c.arguments) for c in rebuilt.tool_calls] == [("f", text)]
    assert [(c.name, c.arguments) for c in extract_named("f", text).tool_calls] == [("f", text)]


def test_registry_knows_hermes_and_refuses_unknown_names() -> None:
    assert "hermes" in tool_parser_names()
    assert get_tool_parser("hermes") is HermesToolParser
    with pytest.raises(ValueError, match=r"unknown parser 'nope'.*hermes"):
        get_tool_parser("nope")


def test_hermes_keeps_special_tokens_in_the_text_it_reads() -> None:
    params = PARSER.adjust_params(SamplingParams(max_tokens=4))
    assert params.skip_special_tokens is False
    assert params.max_tokens == 4
