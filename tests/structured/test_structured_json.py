"""JSON-schema outputs on a random-weight model: they parse strictly and validate."""

from __future__ import annotations

import json
import re

import jsonschema

from corral import SamplingParams, StructuredOutputsParams
from corral.llm import LLM
from tests.structured.schemas import SCHEMAS

SAMPLES_PER_SCHEMA = 2


def assert_compact(text: str) -> None:
    """Outside strings, the only whitespace is one space after each `,` and `:`."""
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    assert re.sub(r"([,:]) ", r"\1", outside) == re.sub(r"\s", "", outside), text


def token_limit(schema: dict) -> int:
    """Room for a generous output: grows with the schema's text."""
    return 96 + 2 * len(json.dumps(schema))


def test_json_outputs_parse_strictly_and_validate(llm: LLM) -> None:
    names = sorted(SCHEMAS)
    params = [
        SamplingParams(
            temperature=1.0,
            seed=1000 * i + j,
            max_tokens=token_limit(SCHEMAS[name]),
            structured_outputs=StructuredOutputsParams(json=SCHEMAS[name]),
        )
        for i, name in enumerate(names)
        for j in range(SAMPLES_PER_SCHEMA)
    ]
    prompts = [f"Answer in JSON ({name}):" for name in names for _ in range(SAMPLES_PER_SCHEMA)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    finished = 0
    for k, output in enumerate(outputs):
        name = names[k // SAMPLES_PER_SCHEMA]
        completion = output.outputs[0]
        if completion.finish_reason != "stop":
            continue
        finished += 1
        value = json.loads(completion.text)  # strict: no raw control characters
        jsonschema.validate(value, SCHEMAS[name])
        assert_compact(completion.text)
    assert len(SCHEMAS) >= 40
    assert finished >= 0.9 * len(outputs), f"{finished} of {len(outputs)} finished"
