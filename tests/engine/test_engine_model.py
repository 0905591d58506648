"""The async engine over a real tiny model: parity with the offline `LLM`, seed facade."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import transformers

from corral.async_llm_engine import AsyncLLMEngine
from corral.config import AsyncEngineArgs
from corral.engine import open_engine
from corral.llm import LLM
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import compare_with_logprobs
from tests.engine.engine_helpers import build_tiny_model

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "device": "cpu",
    "num_kv_blocks": 128,
    "max_model_len": 256,
}
PROMPTS = [
    "The quick brown fox",
    "Structured concurrency keeps",
    "def add(a, b):",
    "The lazy dog jumps over",
    "every task inside a nursery",
    "quick quick quick",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), PROMPTS)


@pytest.fixture(scope="module")
def offline(model_dir: str) -> list[RequestOutput]:
    """The offline `LLM`'s greedy outputs for PROMPTS, as the reference."""
    return LLM(model_dir, **ENGINE_ARGS).generate(PROMPTS, GREEDY, use_tqdm=False)


def assert_same_as_offline(got: RequestOutput, want: RequestOutput) -> None:
    expected, actual = want.outputs[0], got.outputs[0]
    agreed = compare_with_logprobs(
        expected.token_ids, actual.token_ids, expected.logprobs, context=want.prompt
    )
    if agreed == len(expected.token_ids):
        assert actual.text == expected.text


@pytest.mark.anyio
async def test_concurrent_requests_match_offline_llm_despite_cancellations(
    model_dir: str, offline: list[RequestOutput]
) -> None:
    finals: dict[int, RequestOutput] = {}
    with anyio.fail_after(120):
        async with open_engine(model=model_dir, log_requests=False, **ENGINE_ARGS) as engine:

            async def run(i: int) -> None:
                async with engine.generate(PROMPTS[i], GREEDY, f"p{i}") as stream:
                    async for out in stream:
                        finals[i] = out
                        if i == 4 and len(out.outputs[0].token_ids) == 2:
                            await engine.abort("p4")
                        if i == 5 and len(out.outputs[0].token_ids) == 3:
                            return  # leaving `async with` aborts

            async with anyio.create_task_group() as tg:
                for i in range(len(PROMPTS)):
                    tg.start_soon(run, i)
    for i in range(4):
        assert finals[i].finished and finals[i].outputs[0].finish_reason == "length"
        assert_same_as_offline(finals[i], offline[i])
    assert finals[4].outputs[0].finish_reason == "abort"
    assert len(finals[4].outputs[0].token_ids) == 2
    assert not finals[5].finished and len(finals[5].outputs[0].token_ids) == 3


@pytest.mark.anyio
async def test_seed_facade_serves_a_real_model(
    model_dir: str, offline: list[RequestOutput]
) -> None:
    args = AsyncEngineArgs(model=model_dir, max_log_len=8, disable_log_stats=True, **ENGINE_ARGS)
    engine = AsyncLLMEngine.from_engine_args(args)
    assert engine.log_requests and engine.max_log_len == 8 and not engine.is_running
    with anyio.fail_after(120):
        async with engine:
            assert engine.is_running
            tokenizer = await engine.get_tokenizer()
            assert (
                tokenizer("abc").input_ids
                == transformers.AutoTokenizer.from_pretrained(model_dir)("abc").input_ids
            )
            assert (await engine.get_model_config()).max_model_len == 256
            with pytest.raises(ValueError, match="max_model_len=256"):
                engine.generate("quick " * 300, GREEDY, "too-long")
            final = None
            async for output in engine.generate(PROMPTS[0], GREEDY, 0):
                final = output
            assert final is not None and final.request_id == "0"
            assert_same_as_offline(final, offline[0])
            await engine.abort("0")
    assert not engine.is_running


@pytest.mark.anyio
async def test_seed_constructor_with_an_owner_run_loop_serves_a_real_model(
    model_dir: str, offline: list[RequestOutput]
) -> None:
    engine = AsyncLLMEngine(
        False,
        False,
        model_dir,
        log_requests=False,
        start_engine_loop=False,
        disable_log_stats=True,
        **ENGINE_ARGS,
    )
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg, engine:
            stream = engine.generate(PROMPTS[1], GREEDY, "queued")
            assert not engine.is_running
            tg.start_soon(engine.run_engine_loop)
            await engine.check_health()
            config = await engine.get_model_config()
            assert config.max_model_len == 256 and config.vocab_size > 0
            final = [out async for out in stream][-1]
            assert_same_as_offline(final, offline[1])
            await engine.do_log_stats()
    assert engine.is_stopped and not engine.errored
