"""Structured outputs with the engine core in Ray actors: the grammar is compiled in
the actor that runs the request, and a bad one is the caller's ValueError, never the
engine's death."""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest

from corral import RequestOutput, SamplingParams, StructuredOutputsParams
from corral.engine import AsyncEngine, open_engine
from corral.entrypoints.openai_server import build_app, make_context
from corral.testing import compare_with_logprobs
from tests.distributed.ray_helpers import zoo_engine_args
from tests.model.zoo import ModelZoo

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session")]

TIMEOUT = 180.0
MODEL = "llama"
# Finite grammars: once complete, only EOS is allowed, so a random model ends them.
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
}
REGEX = r"(yes|no)-[0-9]{2}"
PROMPTS = [[5 + i, 17, 30 + i, 9] for i in range(4)]


def structured(kind: str, **extra: Any) -> SamplingParams:
    spec = (
        StructuredOutputsParams(json=SCHEMA)
        if kind == "json"
        else StructuredOutputsParams(regex=REGEX)
    )
    return SamplingParams(
        temperature=0.0, max_tokens=48, logprobs=2, structured_outputs=spec, **extra
    )


KINDS = ["json", "regex", "json", "regex"]


def engine_args(zoo: ModelZoo, **extra: Any) -> dict[str, Any]:
    return zoo_engine_args(zoo, MODEL, **extra)


async def run(engine: AsyncEngine, prompt: list[int], params: SamplingParams) -> RequestOutput:
    async with engine.generate(None, params, prompt_token_ids=prompt) as stream:
        outputs = [out async for out in stream]
    return outputs[-1]


async def run_all(engine: AsyncEngine) -> list[RequestOutput]:
    results: list[RequestOutput | None] = [None] * len(PROMPTS)

    async def one(i: int) -> None:
        results[i] = await run(engine, PROMPTS[i], structured(KINDS[i]))

    async with anyio.create_task_group() as tg:
        for i in range(len(PROMPTS)):
            tg.start_soon(one, i)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


async def test_structured_outputs_in_ray_actors_equal_the_in_process_engine(
    zoo: ModelZoo, actor_args: dict[str, Any]
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine(**engine_args(zoo)) as engine:
            expected = await run_all(engine)
        async with open_engine(**engine_args(zoo, **actor_args)) as engine:
            got = await run_all(engine)
            per_replica = engine.replica_stats()
    for kind, want, out in zip(KINDS, expected, got, strict=True):
        completion = out.outputs[0]
        assert completion.finish_reason == "stop"
        if kind == "json":
            jsonschema.validate(json.loads(completion.text), SCHEMA)
        else:
            assert re.fullmatch(REGEX, completion.text)
        assert want.outputs[0].logprobs is not None
        compare_with_logprobs(
            want.outputs[0].token_ids, completion.token_ids, want.outputs[0].logprobs
        )
    # With two replicas, both served (and so compiled) structured requests.
    assert all(s.num_generation_tokens > 0 for s in per_replica.values())


async def test_a_bad_schema_is_a_value_error_and_the_engine_serves_on(
    zoo: ModelZoo, actor_args: dict[str, Any]
) -> None:
    bad = SamplingParams(
        max_tokens=8,
        structured_outputs=StructuredOutputsParams(json={"type": "object", "not": {}}),
    )
    bad_regex = SamplingParams(max_tokens=8, structured_outputs=StructuredOutputsParams(regex="("))
    with anyio.fail_after(TIMEOUT):
        async with open_engine(**engine_args(zoo, **actor_args)) as engine:
            with pytest.raises(ValueError, match=r"structured_outputs\.json"):
                await engine.prepare_sampling_params(bad)
            for i, params in enumerate([bad, bad_regex] * 2):
                with pytest.raises(ValueError, match="structured_outputs"):
                    await run(engine, PROMPTS[i], params)
            good = await run(engine, PROMPTS[0], structured("json"))
            plain = await run(engine, PROMPTS[1], SamplingParams(max_tokens=4, ignore_eos=True))
            assert not engine.errored
            assert all(health is None for health in engine.replica_health().values())
    jsonschema.validate(json.loads(good.outputs[0].text), SCHEMA)
    assert len(plain.outputs[0].token_ids) == 4


async def test_prepared_params_are_admitted_by_the_actors(
    zoo: ModelZoo, actor_args: dict[str, Any]
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine(**engine_args(zoo, **actor_args)) as engine:
            params = await engine.prepare_sampling_params(structured("regex"))
            # The grammar stays in the actor; the params travel unbound.
            assert params.structured_outputs is not None
            assert params.structured_outputs.compiled is None
            outputs = [await run(engine, prompt, params) for prompt in PROMPTS[:2]]
    assert all(re.fullmatch(REGEX, out.outputs[0].text) for out in outputs)


async def test_the_server_answers_400_for_a_bad_schema_and_serves_on(zoo: ModelZoo) -> None:
    def completion(schema: dict[str, Any]) -> dict[str, Any]:
        response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        return {
            "model": "tiny",
            "prompt": "Colors:",
            "max_tokens": 48,
            "temperature": 0,
            "response_format": response_format,
        }

    with anyio.fail_after(TIMEOUT):
        async with open_engine(**engine_args(zoo, data_parallel_size=2)) as engine:
            ctx = await make_context(
                engine, model_path=str(zoo.path(MODEL)), served_model_names=["tiny"]
            )
            transport = httpx2.ASGITransport(app=build_app(ctx))
            async with httpx2.AsyncClient(transport=transport, base_url="http://corral") as client:
                bad = await client.post("/v1/completions", json=completion({"type": "nope"}))
                good = await client.post("/v1/completions", json=completion(SCHEMA))
            assert not engine.errored
    assert bad.status_code == 400, bad.text
    assert "response_format" in bad.json()["error"]["message"]
    assert good.status_code == 200, good.text
    jsonschema.validate(json.loads(good.json()["choices"][0]["text"]), SCHEMA)
