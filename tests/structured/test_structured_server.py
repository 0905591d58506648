"""`response_format` and the `guided_*` fields on the OpenAI endpoints (app in-process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from tests.server.server_helpers import SERVED_NAME, build_tiny_model, open_app

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server tests' tiny model (it has a chat template)."""
    folder = tmp_path_factory.mktemp("chat_model")
    build_tiny_model(folder)
    return folder


def chat(extra: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Plan a trip."}],
        "max_tokens": 120,
        "seed": 3,
        "stream": stream,
        **extra,
    }


async def test_response_format_json_schema_on_chat_and_completions(chat_model: Path) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True},
    }
    async with open_app(chat_model) as (client, _):
        answer = await client.post(
            "/v1/chat/completions", json=chat({"response_format": response_format})
        )
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
        answer = await client.post(
            "/v1/completions",
            json={
                "model": SERVED_NAME,
                "prompt": ["Trip:", "Another trip:"],
                "max_tokens": 120,
                "seed": 4,
                "response_format": response_format,
            },
        )
        assert answer.status_code == 200, answer.text
        for choice in answer.json()["choices"]:
            jsonschema.validate(json.loads(choice["text"]), SCHEMA)


async def test_streamed_json_object_reassembles_to_an_object(chat_model: Path) -> None:
    async with open_app(chat_model) as (client, _):
        body = chat({"response_format": {"type": "json_object"}, "max_tokens": 150}, stream=True)
        answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200
        events = [
            json.loads(block[len("data: ") :])
            for block in answer.text.split("\n\n")
            if block and block != "data: [DONE]"
        ]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        finish = [
            e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"]
        ]
        if finish == ["stop"]:
            assert isinstance(json.loads(text), dict)
        else:
            assert finish == ["length"]


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA)),
        ({"guided_regex": "[0-9]{3}-[a-z]{2}"}, lambda t: len(t) == 6 and t[3] == "-"),
        ({"guided_choice": ["yes", "no"]}, lambda t: t in ("yes", "no")),
        ({"guided_grammar": 'root ::= "a" ("b" | "c")'}, lambda t: t in ("ab", "ac")),
    ],
)
async def test_guided_fields(chat_model: Path, extra: dict[str, Any], check: Any) -> None:
    async with open_app(chat_model) as (client, _):
        answer = await client.post("/v1/chat/completions", json=chat(extra))
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert check(choice["message"]["content"]) is not False


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nope"}},
                }
            },
            "response_format",
            "nope",
        ),
        ({"guided_json": {"not": {"type": "string"}}}, "guided_json", "not supported"),
        ({"guided_grammar": "root ::= ("}, "guided_grammar", "EBNF"),
        ({"guided_regex": "(a"}, "guided_regex", "regex"),
        ({"guided_choice": []}, "guided_choice", "non-empty"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "only one"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ],
)
async def test_bad_structured_input_is_400_naming_the_field(
    chat_model: Path, extra: dict[str, Any], field: str, words: str, stream: bool
) -> None:
    async with open_app(chat_model) as (client, _):
        answer = await client.post("/v1/chat/completions", json=chat(extra, stream=stream))
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == field, error
        assert words.lower() in error["message"].lower(), error


@pytest.mark.parametrize("stream", [False, True])
async def test_masked_tokens_in_top_logprobs_are_json_numbers(
    chat_model: Path, stream: bool
) -> None:
    # The grammar gives every token but the allowed ones logprob -inf; JSON has no
    # -inf, so the server reports vLLM's floor instead of failing the request.
    extra = {"guided_choice": ["yes", "no"], "logprobs": True, "top_logprobs": 3}
    async with open_app(chat_model) as (client, _):
        answer = await client.post("/v1/chat/completions", json=chat(extra, stream=stream))
        assert answer.status_code == 200, answer.text
        if stream:
            events = [
                json.loads(line[len("data: ") :])
                for line in answer.text.splitlines()
                if line.startswith("data: {")
            ]
            content = [
                entry
                for event in events
                for choice in event["choices"]
                for entry in (choice.get("logprobs") or {}).get("content") or []
            ]
        else:
            content = answer.json()["choices"][0]["logprobs"]["content"]
        assert content
        tops = [top["logprob"] for entry in content for top in entry["top_logprobs"]]
        assert len(tops) == 3 * len(content)
        assert all(-9999.0 <= value <= 0.0 for value in tops)
        # At least one step offered fewer than three allowed tokens: the floor shows.
        assert -9999.0 in tops
        completion = await client.post(
            "/v1/completions",
            json={
                "model": SERVED_NAME,
                "prompt": "Answer:",
                "max_tokens": 8,
                "guided_choice": ["yes", "no"],
                "logprobs": 3,
            },
        )
        assert completion.status_code == 200, completion.text
        legacy = completion.json()["choices"][0]["logprobs"]["top_logprobs"]
        assert all(-9999.0 <= v <= 0.0 for entry in legacy for v in entry.values())
