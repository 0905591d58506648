"""Submitting, streaming and aborting requests through the async engine (fake model)."""

from __future__ import annotations

import anyio
import pytest

from corral.engine import EngineClosedError, open_engine_from_core
from corral.lora import LoRARequest
from corral.sampling_params import SamplingParams
from corral.testing import wait_idle
from tests.engine.engine_helpers import TIMEOUT, completions, fake_core, greedy, run_alone

pytestmark = pytest.mark.anyio

PROMPT = [5, 6, 7, 8, 9]


async def test_stream_yields_cumulative_outputs_ending_with_finished() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            seen = []
            async with engine.generate(None, greedy(6), "r", prompt_token_ids=PROMPT) as stream:
                async for out in stream:
                    seen.append(list(out.outputs[0].token_ids))
                    assert out.request_id == "r"
            assert out.finished and out.outputs[0].finish_reason == "length"
            assert [len(tokens) for tokens in seen] == [1, 2, 3, 4, 5, 6]
            assert all(seen[i] == seen[-1][: i + 1] for i in range(6))
            assert completions(out) == completions(run_alone(PROMPT, greedy(6)))


async def test_bare_async_for_works_like_the_seed() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            final = None
            async for out in engine.generate(None, greedy(3), 0, prompt_token_ids=PROMPT):
                final = out
            assert final is not None and final.finished and final.request_id == "0"


async def test_generated_request_ids_are_unique() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            streams = [engine.generate(None, greedy(2), prompt_token_ids=PROMPT) for _ in range(5)]
            assert len({s.request_id for s in streams}) == 5
            for stream in streams:
                async with stream:
                    async for _ in stream:
                        pass


async def test_duplicate_live_request_id_raises_value_error() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            async with engine.generate(None, greedy(4), "dup", prompt_token_ids=PROMPT) as first:
                with pytest.raises(ValueError, match="request_id 'dup'"):
                    engine.generate(None, greedy(4), "dup", prompt_token_ids=PROMPT)
                outs = [out async for out in first]
            assert outs[-1].finished
            # Finished: the id is free again.
            async with engine.generate(None, greedy(1), "dup", prompt_token_ids=PROMPT) as again:
                assert [o.finished async for o in again] == [True]


async def test_abort_ends_stream_with_abort_and_no_newer_tokens() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(step_delay=0.01), log_stats=False) as engine:
            async with engine.generate(None, greedy(50), "a", prompt_token_ids=PROMPT) as stream:
                outs = []
                async for out in stream:
                    outs.append(list(out.outputs[0].token_ids))
                    if len(outs) == 3:
                        await engine.abort("a")
            assert out.finished and out.outputs[0].finish_reason == "abort"
            assert list(out.outputs[0].token_ids) == outs[2]
            assert len(outs) == 4
            await wait_idle(engine)


async def test_abort_of_unknown_or_finished_id_is_a_no_op() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            await engine.abort("never-seen")
            async with engine.generate(None, greedy(2), "f", prompt_token_ids=PROMPT) as stream:
                outs = [out async for out in stream]
            await engine.abort("f")
            assert outs[-1].outputs[0].finish_reason == "length"
            assert engine.is_running


async def test_reused_id_right_after_abort_is_not_killed_by_the_old_abort() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(step_delay=0.005), log_stats=False) as engine:
            old = engine.generate(None, greedy(40), "same", prompt_token_ids=PROMPT)
            async with old:
                await old.__anext__()
                await engine.abort("same")
                new = engine.generate(None, greedy(8), "same", prompt_token_ids=[3, 4])
                old_outs = [o async for o in old]
            async with new:
                new_outs = [o async for o in new]
            assert old_outs[-1].outputs[0].finish_reason == "abort"
            assert new_outs[-1].request_id == "same"
            assert completions(new_outs[-1]) == completions(run_alone([3, 4], greedy(8)))
            await wait_idle(engine)


async def test_request_cancelled_before_the_loop_saw_it_does_not_leak() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            for i in range(20):
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    async with engine.generate(
                        None, greedy(30), f"c{i}", prompt_token_ids=PROMPT
                    ) as s:
                        await s.__anext__()
                assert scope.cancelled_caught
            await wait_idle(engine)
            assert engine.stats().num_unfinished_requests == 0


async def test_prompt_too_long_raises_value_error_up_front() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(max_model_len=16), log_stats=False) as engine:
            with pytest.raises(ValueError, match="max_model_len=16"):
                engine.generate(None, greedy(1), prompt_token_ids=list(range(1, 18)))
            with pytest.raises(ValueError, match="prompt_token_ids"):
                engine.generate("text", greedy(1))
            with pytest.raises(ValueError, match="sampling_params"):
                engine.generate(None, {"max_tokens": 3}, prompt_token_ids=PROMPT)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="prefix_pos"):
                engine.generate(None, greedy(1), prompt_token_ids=PROMPT, prefix_pos=9)
            # The engine keeps serving.
            async with engine.generate(None, greedy(2), prompt_token_ids=PROMPT) as stream:
                assert [o.finished async for o in stream] == [False, True]


async def test_lora_request_without_enable_lora_is_refused() -> None:
    lora = LoRARequest("a", 1, "/adapters/a")
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            with pytest.raises(ValueError, match="LoRA is not enabled"):
                engine.generate(None, greedy(1), prompt_token_ids=PROMPT, lora_request=lora)
            with pytest.raises(ValueError, match="must be a LoRARequest"):
                engine.generate(None, greedy(1), prompt_token_ids=PROMPT, lora_request=object())  # type: ignore[arg-type]


async def test_generate_after_close_raises_engine_closed_error() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            assert engine.is_running
        assert not engine.is_running
        with pytest.raises(EngineClosedError, match="not running"):
            engine.generate(None, greedy(1), prompt_token_ids=PROMPT)
        await engine.abort("anything")


async def test_n_completions_stream_together() -> None:
    params = SamplingParams(n=2, best_of=3, temperature=1.0, seed=7, max_tokens=5, ignore_eos=True)
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(), log_stats=False) as engine:
            async with engine.generate(None, params, prompt_token_ids=PROMPT) as stream:
                outs = [out async for out in stream]
            assert len(outs[-1].outputs) == 2
            assert completions(outs[-1]) == completions(run_alone(PROMPT, params))


async def test_request_ending_while_the_consumer_enters_anext_delivers_the_final() -> None:
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(fake_core(step_delay=0.05), log_stats=False) as engine:
            stream = engine.generate(None, greedy(90), "ends", prompt_token_ids=PROMPT)
            async with anyio.create_task_group() as tg:
                # Runs during the checkpoint that starts the consumer's receive.
                tg.start_soon(engine.abort, "ends")
                async with stream:
                    outs = [out async for out in stream]
            assert len(outs) == 1 and outs[0].finished
            assert outs[0].outputs[0].finish_reason == "abort"
