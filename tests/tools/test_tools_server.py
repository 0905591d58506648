"""Tool calling through the official ``openai`` client, on the embedded default model.

The model never learnt to call tools, so the tests make it: "required" and named
choices generate under the tools' schemas, and "auto" is shown a call by forcing the
Hermes text with ``guided_regex`` (the parser then has to find it, as it would in a
real model's answer)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.tools.tool_helpers import MESSAGES, MODEL, PARAMETERS, TOOLS, open_client

pytestmark = pytest.mark.anyio

FORCED_CALL = (
    r'<tool_call>\n\{"name": "get_weather", "arguments": '
    r'\{"city": "(Paris|Oslo)", "days": [1-7]\}\}\n</tool_call>'
)
CHOICES: dict[str, dict[str, Any]] = {
    "required": {"tool_choice": "required", "parallel_tool_calls": False},
    "named": {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
    "auto": {"tool_choice": "auto", "extra_body": {"guided_regex": FORCED_CALL}},
}
FINISH = {"required": "tool_calls", "named": "stop", "auto": "tool_calls"}


def request(choice: str, seed: int = 0) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": MESSAGES,
        "tools": TOOLS,
        "max_tokens": 100,
        "seed": seed,
        **CHOICES[choice],
    }


def calls_of(message: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


@pytest.mark.parametrize("choice", ["required", "named", "auto"])
async def test_tool_calls_carry_ids_and_arguments_that_validate(choice: str) -> None:
    async with open_client() as client:
        result = await client.chat.completions.create(**request(choice, seed=1))
    answer = result.choices[0]
    assert answer.finish_reason == FINISH[choice]
    assert answer.message.content is None
    assert answer.message.tool_calls
    for call in answer.message.tool_calls:
        assert call.id.startswith("chatcmpl-tool-")
        assert call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    if choice == "named":
        assert calls_of(answer.message)[0][0] == "get_time"


# On trio, the openai client leaves its SSE generators suspended after "[DONE]" and
# trio reports them when they are collected: the client's leak, not the server's.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object (SSEDecoder|AsyncStream|Response)\."
    ":pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.parametrize("choice", ["required", "named", "auto"])
async def test_streamed_tool_calls_reassemble_to_the_whole_answer(choice: str) -> None:
    async with open_client() as client:
        whole = (await client.chat.completions.create(**request(choice))).choices[0]
        async with client.chat.completions.stream(**request(choice)) as stream:
            chunks = [event.chunk async for event in stream if event.type == "chunk"]
            final = (await stream.get_final_completion()).choices[0]
    assert final.finish_reason == whole.finish_reason == FINISH[choice]
    assert calls_of(final.message) == calls_of(whole.message)
    assert not final.message.content
    # Each call is announced once (id, type, name), then only its arguments grow.
    parts = [call for c in chunks for d in [c.choices[0].delta] for call in d.tool_calls or []]
    heads = [p for p in parts if p.id is not None]
    assert len(heads) == len(whole.message.tool_calls or [])
    assert all(p.type == "function" and p.function and p.function.name for p in heads)
    assert all(p.function is None or p.function.name is None for p in parts if p.id is None)
    assert len(parts) > len(heads), "the arguments arrived in one piece"


async def test_auto_without_a_call_answers_as_tool_choice_none_does() -> None:
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 24}
    async with open_client() as client:
        auto = await client.chat.completions.create(**body, tool_choice="auto", temperature=0)
        none = await client.chat.completions.create(**body, tool_choice="none", temperature=0)
        plain = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0
        )
    assert auto.choices[0].message.tool_calls is None
    assert auto.choices[0].message.content == none.choices[0].message.content
    assert auto.choices[0].finish_reason == none.choices[0].finish_reason
    # "none" still shows the tools to the model: the template lists them.
    assert none.usage is not None and plain.usage is not None
    assert none.usage.prompt_tokens > plain.usage.prompt_tokens + 50


@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object (SSEDecoder|AsyncStream|Response)\."
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_a_malformed_call_under_auto_is_plain_content_whole_and_streamed() -> None:
    broken = r'Look: <tool_call>\{"name": get_weather\}</tool_call>'
    body = {**request("auto"), "extra_body": {"guided_regex": broken}}
    async with open_client() as client:
        whole = (await client.chat.completions.create(**body)).choices[0]
        async with client.chat.completions.stream(**body) as stream:
            streamed = (await stream.get_final_completion()).choices[0]
    text = 'Look: <tool_call>{"name": get_weather}</tool_call>'
    assert (whole.message.content, whole.message.tool_calls) == (text, None)
    assert (streamed.message.content, streamed.message.tool_calls) == (text, None)
    assert whole.finish_reason == streamed.finish_reason == "stop"


async def test_none_never_reads_calls_even_when_the_text_has_one() -> None:
    body = {**request("auto"), "tool_choice": "none"}
    async with open_client() as client:
        answer = (await client.chat.completions.create(**body)).choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content is not None
    assert answer.message.content.startswith('<tool_call>\n{"name": "get_weather"')
    assert answer.finish_reason == "stop"


async def test_a_conversation_with_a_tool_result_renders_in_the_hermes_format() -> None:
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "sunny"},
    ]
    async with open_client() as client:
        tokens = await client.post(
            "/../tokenize", body={"model": MODEL, "messages": messages}, cast_to=object
        )
        text = await client.post(
            "/../detokenize", body={"model": MODEL, "tokens": tokens["tokens"]}, cast_to=object
        )
        answer = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8
        )
        with_tools = await client.post(
            "/../tokenize",
            body={"model": MODEL, "messages": messages, "tools": TOOLS},
            cast_to=object,
        )
    assert text["prompt"].endswith(
        '<|assistant|><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|eos|><|user|><tool_response>\nsunny\n</tool_response><|eos|><|assistant|>"
    )
    assert answer.choices[0].message.tool_calls is None
    # The prompt counted with tools is the one the completion was given.
    assert answer.usage is not None
    assert with_tools["count"] == answer.usage.prompt_tokens > tokens["count"]


BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    (
        {"tool_choice": {"type": "function", "function": {"name": "get_moon"}}},
        "tool_choice",
        "'get_moon' is not among the tools",
    ),
    ({"tools": [], "tool_choice": "required"}, "tool_choice", "only allowed when tools"),
    (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ]
        },
        "tools",
        "type 'object'",
    ),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools", "defined twice"),
    (
        {"tools": [{"type": "function", "function": {"name": "a b"}}]},
        "tools",
        "letters, digits",
    ),
    (
        {
            "tool_choice": "required",
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}},
                    },
                }
            ],
        },
        "tools",
        "nope",
    ),
    (
        {"tool_choice": "required", "response_format": {"type": "json_object"}},
        "tool_choice",
        "cannot be combined with response_format",
    ),
    (
        {"messages": [{"role": "tool", "content": "sunny"}]},
        "tool_call_id",
        "required for a tool message",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ],
                }
            ]
        },
        "messages.0.tool_calls.0.function.arguments",
        "not valid JSON",
    ),
]


@pytest.mark.parametrize(("change", "param", "words"), BAD_REQUESTS)
async def test_bad_tool_requests_are_400_naming_the_field(
    change: dict[str, Any], param: str, words: str
) -> None:
    async with open_client() as client:
        for stream in (False, True):
            body = {**request("required"), "stream": stream, **change}
            del body["parallel_tool_calls"]
            if "tool_choice" not in change:
                body["tool_choice"] = "none"
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(**body)
            error: Any = caught.value.body
            assert error["param"] == param, error
            assert words in error["message"], error


@pytest.mark.parametrize("tool_choice", ["auto", None])
async def test_auto_needs_the_server_flag(tool_choice: str | None) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 4}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    async with open_client(tool_call_parser="hermes", enable_auto_tool_choice=False) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(**body)
        required = await client.chat.completions.create(**request("required"))
    error: Any = caught.value.body
    assert error["param"] == "tool_choice"
    assert "--enable-auto-tool-choice" in error["message"]
    assert required.choices[0].message.tool_calls
