"""The async engine applies the token-constraint fields the way the offline LLM does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.engine import AsyncEngine, open_engine
from corral.sampling_params import SamplingParams
from tests.model.zoo import ModelZoo

pytestmark = pytest.mark.anyio

MODEL = "qwen2"


@pytest.fixture
async def engine(zoo: ModelZoo) -> AsyncIterator[AsyncEngine]:
    async with open_engine(
        model=str(zoo.path(MODEL)),
        dtype="float32",
        num_kv_blocks=64,
        max_model_len=256,
        log_requests=False,
        disable_log_stats=True,
    ) as engine:
        yield engine


async def final(engine: AsyncEngine, params: SamplingParams, **kwargs: Any) -> Any:
    outputs = []
    async with engine.generate(None, params, **kwargs) as stream:
        async for output in stream:
            outputs.append(output)
    assert outputs and outputs[-1].finished
    return outputs[-1]


async def test_engine_matches_the_offline_llm(engine: AsyncEngine, zoo: ModelZoo) -> None:
    tokenizer = await engine.get_tokenizer()
    prompt = tokenizer("The quick brown").input_ids
    long_prompt = list(range(3, 60))
    cases = [
        (prompt, SamplingParams(temperature=0.0, max_tokens=6, logit_bias={"9": 100})),
        (prompt, SamplingParams(temperature=0.0, max_tokens=6, bad_words=["the", "fox"])),
        (prompt, SamplingParams(temperature=0.0, max_tokens=6, allowed_token_ids=[4, 40, 80])),
        (long_prompt, SamplingParams(temperature=0.0, max_tokens=4, truncate_prompt_tokens=7)),
    ]
    llm = zoo.llm(MODEL)
    for ids, params in cases:
        mine = await final(engine, params, prompt_token_ids=ids)
        offline = llm.generate(prompt_token_ids=ids, sampling_params=params, use_tqdm=False)[0]
        assert mine.prompt_token_ids == offline.prompt_token_ids
        assert mine.outputs[0].token_ids == offline.outputs[0].token_ids


async def test_bad_requests_raise_and_the_engine_keeps_serving(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="in logit_bias contain out-of-vocab"):
        engine.generate(None, SamplingParams(logit_bias={10**6: 1}), prompt_token_ids=[1, 2])
    with pytest.raises(ValueError, match="allowed_token_ids contains out-of-vocab"):
        engine.generate(None, SamplingParams(allowed_token_ids=[10**6]), prompt_token_ids=[1])
    with pytest.raises(ValueError, match="greater than max_model_len"):
        engine.generate(None, SamplingParams(truncate_prompt_tokens=999), prompt_token_ids=[1])
    output = await final(engine, SamplingParams(max_tokens=2), prompt_token_ids=[1, 2])
    assert len(output.outputs[0].token_ids) == 2


async def test_a_scoring_request_streams_one_final_output(engine: AsyncEngine) -> None:
    params = SamplingParams(max_tokens=0, prompt_logprobs=1)
    outputs = []
    async with engine.generate(None, params, prompt_token_ids=[3, 4, 5, 6]) as stream:
        async for output in stream:
            outputs.append(output)
    assert outputs[-1].finished
    assert outputs[-1].outputs[0].token_ids == []
    assert len(outputs[-1].prompt_logprobs) == 4
