"""LoRA adapters with the engine core in Ray actors: each actor reads the adapter from
its path and keeps the manager's pins, and a bad adapter is the caller's ValueError,
never the engine's death."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from corral import LoRARequest, RequestOutput, SamplingParams
from corral.engine import AsyncEngine, open_engine
from corral.testing import compare_with_logprobs
from tests.distributed.ray_helpers import zoo_engine_args
from tests.lora.adapters import AdapterFactory
from tests.model.zoo import ModelZoo

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session")]

TIMEOUT = 180.0
MODEL = "qwen3"
PARAMS = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2, ignore_eos=True)


def engine_args(zoo: ModelZoo, **extra: Any) -> dict[str, Any]:
    return zoo_engine_args(zoo, MODEL, enable_lora=True, max_loras=2, **extra)


async def run(engine: AsyncEngine, prompt: list[int], lora: LoRARequest | None) -> RequestOutput:
    async with engine.generate(None, PARAMS, prompt_token_ids=prompt, lora_request=lora) as st:
        outputs = [out async for out in st]
    return outputs[-1]


async def run_all(
    engine: AsyncEngine, prompts: list[list[int]], loras: list[LoRARequest | None]
) -> list[RequestOutput]:
    results: list[RequestOutput | None] = [None] * len(prompts)

    async def one(i: int) -> None:
        results[i] = await run(engine, prompts[i], loras[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(prompts)):
            tg.start_soon(one, i)
    return [r for r in results if r is not None]


async def test_adapters_in_ray_actors_equal_the_in_process_engine(
    zoo: ModelZoo, adapters: AdapterFactory, actor_args: dict[str, Any]
) -> None:
    loras = [
        None,
        *(LoRARequest(f"a{i}", i, str(adapters.make(MODEL, seed=i)[0])) for i in (1, 2, 3)),
        LoRARequest("a1", 1, str(adapters.make(MODEL, seed=1)[0])),
    ]
    # The last request is the first's prompt with an adapter.
    prompts = [[5 + i, 17, 30 + i, 9] for i in range(len(loras) - 1)] + [[5, 17, 30, 9]]
    with anyio.fail_after(TIMEOUT):
        async with open_engine(**engine_args(zoo)) as engine:
            expected = await run_all(engine, prompts, loras)
        async with open_engine(**engine_args(zoo, **actor_args)) as engine:
            got = await run_all(engine, prompts, loras)
            per_replica = engine.replica_stats()
            resident = await engine.list_loras()
            # Removing drops an adapter at once only when no pin holds it: every
            # request's unpin reached its actor.
            for lora_int_id in resident:
                assert await engine.remove_lora(lora_int_id)
            left = await engine.list_loras()
    assert len(got) == len(expected) == len(loras)
    for lora, want, out in zip(loras, expected, got, strict=True):
        assert want.outputs[0].logprobs is not None
        compare_with_logprobs(
            want.outputs[0].token_ids,
            out.outputs[0].token_ids,
            want.outputs[0].logprobs,
            context=str(lora),
        )
    # The adapter changes the output (else the comparison above proves little).
    assert got[-1].outputs[0].logprobs != got[0].outputs[0].logprobs
    assert all(s.num_generation_tokens > 0 for s in per_replica.values())
    assert set(resident) <= {1, 2, 3} and resident
    assert left == []


async def test_a_bad_adapter_is_a_value_error_and_the_engine_serves_on(
    zoo: ModelZoo, adapters: AdapterFactory, actor_args: dict[str, Any]
) -> None:
    bad = LoRARequest("bad", 7, "/nonexistent")
    good = LoRARequest("a1", 1, str(adapters.make(MODEL, seed=1)[0]))
    with anyio.fail_after(TIMEOUT):
        async with open_engine(**engine_args(zoo, **actor_args)) as engine:
            with pytest.raises(ValueError, match="lora_path is not a folder"):
                await engine.add_lora(bad)
            for i in range(2):
                with pytest.raises(ValueError, match="lora_path is not a folder"):
                    await run(engine, [4 + i, 5], bad)
            await engine.add_lora(good)
            outputs = await run_all(engine, [[4, 5], [6, 7]], [good, None])
            assert not engine.errored
            assert all(health is None for health in engine.replica_health().values())
            assert 7 not in await engine.list_loras()
    assert all(len(out.outputs[0].token_ids) == 8 for out in outputs)
