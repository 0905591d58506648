"""lora_request on the async front doors (asyncio and trio)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from corral import AsyncEngineArgs, AsyncLLMEngine, LoRARequest, RequestOutput, SamplingParams
from corral.engine import AsyncEngine, open_engine
from corral.testing import compare_with_logprobs
from tests.lora.adapters import AdapterFactory
from tests.model.zoo import ModelZoo

MODEL = "qwen3"
PARAMS = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2, ignore_eos=True)


def engine_args(zoo: ModelZoo, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(zoo.path(MODEL)),
        "dtype": "float32",
        "num_kv_blocks": 128,
        "max_model_len": 256,
        "log_requests": False,
        "disable_log_stats": True,
        **extra,
    }


async def run(engine: AsyncEngine, prompt: list[int], lora: LoRARequest | None) -> RequestOutput:
    async with engine.generate(None, PARAMS, prompt_token_ids=prompt, lora_request=lora) as st:
        outputs = [out async for out in st]
    return outputs[-1]


@pytest.mark.anyio
async def test_concurrent_adapters_equal_each_alone(
    zoo: ModelZoo, adapters: AdapterFactory
) -> None:
    loras = [
        None,
        *(LoRARequest(f"a{i}", i, str(adapters.make(MODEL, seed=i)[0])) for i in (1, 2, 3)),
    ]
    prompts = [[5 + i, 17, 30 + i, 9] for i in range(len(loras))]
    with anyio.fail_after(120):
        async with open_engine(**engine_args(zoo, enable_lora=True, max_loras=2)) as engine:
            together: list[RequestOutput | None] = [None] * len(loras)

            async def one(i: int) -> None:
                together[i] = await run(engine, prompts[i], loras[i])

            async with anyio.create_task_group() as tg:
                for i in range(len(loras)):
                    tg.start_soon(one, i)
            for prompt, lora, out in zip(prompts, loras, together, strict=True):
                alone = (await run(engine, prompt, lora)).outputs[0]
                assert out is not None and alone.logprobs is not None
                compare_with_logprobs(
                    alone.token_ids, out.outputs[0].token_ids, alone.logprobs, context=str(lora)
                )
            assert engine._lora is not None and not engine._lora._pins  # every pin released
            # max_cpu_loras defaults to max_loras: the two most recently used stay.
            assert await engine.list_loras() == [2, 3]


@pytest.mark.anyio
async def test_bad_adapter_ends_its_stream_and_add_lora_raises(zoo: ModelZoo) -> None:
    bad = LoRARequest("bad", 1, "/nonexistent")
    with anyio.fail_after(120):
        async with open_engine(**engine_args(zoo, enable_lora=True)) as engine:
            with pytest.raises(ValueError, match="lora_path is not a folder"):
                await engine.add_lora(bad)
            with pytest.raises(ValueError, match="lora_path is not a folder"):
                await run(engine, [4, 5], bad)
            assert (await run(engine, [4, 5], None)).finished


@pytest.mark.anyio
async def test_a_request_the_core_refuses_releases_its_adapter(
    zoo: ModelZoo, adapters: AdapterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    lora = LoRARequest("a1", 1, str(adapters.make(MODEL, seed=1)[0]))
    with anyio.fail_after(120):
        async with open_engine(**engine_args(zoo, enable_lora=True)) as engine:
            await engine.add_lora(lora)
            core: Any = engine._core

            def refuse(*args: Any, **kwargs: Any) -> None:
                raise ValueError("refused by the core")

            # The front door's checks pass; the core refuses at the loop's step boundary.
            monkeypatch.setattr(core, "add_request", refuse)
            with pytest.raises(ValueError, match="refused by the core"):
                await run(engine, [4, 5], lora)
            monkeypatch.undo()
            assert engine._lora is not None and not engine._lora._pins
            assert (await run(engine, [4, 5], lora)).finished


@pytest.mark.anyio
async def test_lora_request_without_enable_lora_is_refused(zoo: ModelZoo) -> None:
    with anyio.fail_after(120):
        async with open_engine(**engine_args(zoo)) as engine:
            with pytest.raises(ValueError, match="LoRA is not enabled"):
                engine.generate(
                    None, PARAMS, prompt_token_ids=[4], lora_request=LoRARequest("a", 1, "/p")
                )


@pytest.mark.anyio
async def test_async_llm_engine_takes_lora_request(zoo: ModelZoo, adapters: AdapterFactory) -> None:
    lora = LoRARequest("a", 1, str(adapters.make(MODEL, seed=1)[0]))
    args = AsyncEngineArgs(**engine_args(zoo, enable_lora=True))
    with anyio.fail_after(120):
        async with AsyncLLMEngine.from_engine_args(args) as engine:
            outputs = [
                out
                async for out in engine.generate(
                    None, PARAMS, "r1", prompt_token_ids=[4, 5], lora_request=lora
                )
            ]
            assert len(outputs[-1].outputs[0].token_ids) == 8
            assert await engine.list_loras() == [1]
            assert await engine.remove_lora(1)
            assert await engine.list_loras() == []
