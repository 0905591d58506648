"""Structured requests through preemption, chunked prefill, the prefix cache and the
async engine: the grammar state follows each sequence, never the batch."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import torch

from corral import SamplingParams, StructuredOutputsParams
from corral.engine import open_engine
from corral.llm import LLM

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
        "n": {"type": "integer"},
    },
    "required": ["name", "tags", "n"],
}


def requests(count: int) -> tuple[list[list[int]], list[SamplingParams]]:
    # Seeded samples: compared exactly, since a seeded draw depends only on
    # (seed, sample index, position) and the (masked) logits.
    prompts = [[5 + (7 * i + j) % 300 for j in range(20 + 9 * i)] for i in range(count)]
    params = [
        SamplingParams(
            seed=100 + i,
            max_tokens=120,
            structured_outputs=StructuredOutputsParams(json=SCHEMA),
        )
        for i in range(count)
    ]
    return prompts, params


def token_ids(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_preemption_and_chunking_leave_structured_outputs_unchanged(
    llm: LLM, model_path: Path
) -> None:
    prompts, params = requests(8)
    alone = [token_ids(llm, [p], [s])[0] for p, s in zip(prompts, params, strict=True)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = LLM(
            str(model_path),
            dtype="float32",
            num_kv_blocks=24,
            max_model_len=256,
            max_num_batched_tokens=32,
            max_num_seqs=8,
            enable_prefix_caching=True,
        )
        together = token_ids(small, prompts, params)
        again = token_ids(small, prompts, params)  # now with prefix-cache hits
    finally:
        torch.set_num_threads(threads)
    assert small.engine_core.stats().num_preemptions > 0
    assert together == alone
    assert again == alone
    for ids in alone:
        text = llm.get_tokenizer().decode(ids, skip_special_tokens=True)
        json.loads(text)
    # Matchers of ended sequences go at the next step.
    small.generate(["x"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert small.engine_core.runner.structured_outputs._matchers == {}


@pytest.mark.anyio
async def test_async_engine_compiles_off_the_loop_and_reports_bad_schemas(
    model_path: Path,
) -> None:
    async with open_engine(
        model=str(model_path), dtype="float32", num_kv_blocks=64, max_model_len=256
    ) as engine:
        good = SamplingParams(
            seed=1, max_tokens=100, structured_outputs=StructuredOutputsParams(json=SCHEMA)
        )
        bad = SamplingParams(
            structured_outputs=StructuredOutputsParams(json={"type": "object", "required": 3})
        )
        with pytest.raises(ValueError, match=r"structured_outputs\.json"):
            await engine.prepare_sampling_params(bad)
        texts: list[str] = []

        async def run(params: SamplingParams) -> None:
            async with engine.generate("Describe:", params) as stream:
                async for output in stream:
                    final = output
            texts.append(final.outputs[0].text)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(run, good)
        assert len(texts) == 3
        for text in texts:
            value = json.loads(text)
            assert set(value) == {"name", "tags", "n"}
        # A bad schema given straight to generate ends its stream with the error;
        # the engine keeps serving.
        with pytest.raises(ValueError, match=r"structured_outputs\.json"):
            async with engine.generate("x", bad) as stream:
                async for _ in stream:
                    pass
        prepared = await engine.prepare_sampling_params(good)
        async with engine.generate("Describe:", prepared) as stream:
            async for output in stream:
                final = output
        assert json.loads(final.outputs[0].text)
