"""`RequestOutputKind`: cumulative snapshots, deltas that concatenate to the final
output whatever the consumer's pace, and a single final output."""

from __future__ import annotations

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.engine import open_engine_from_core
from corral.outputs import RequestOutput
from corral.sampling_params import RequestOutputKind, SamplingParams
from corral.testing.strategies import sampling_params
from tests.engine.engine_helpers import TIMEOUT, fake_core, run_alone

DELTA = RequestOutputKind.DELTA


def concatenate(deltas: list[RequestOutput]) -> dict[int, tuple[str, list[int], list | None]]:
    """Per completion index: the concatenated text, token ids and logprobs."""
    joined: dict[int, tuple[str, list[int], list | None]] = {}
    for out in deltas:
        for c in out.outputs:
            text, ids, logprobs = joined.get(c.index, ("", [], None if c.logprobs is None else []))
            if c.logprobs is not None:
                assert logprobs is not None
                logprobs = logprobs + c.logprobs
            joined[c.index] = (text + c.text, ids + c.token_ids, logprobs)
    return joined


async def read_slowly(
    engine: corral.AsyncEngine, prompt: list[int], params: SamplingParams, pauses: list[float]
) -> list[RequestOutput]:
    outputs = []
    async for out in engine.generate(None, params, prompt_token_ids=prompt):
        outputs.append(out)
        if pauses:
            await anyio.sleep(pauses[len(outputs) % len(pauses)])
    return outputs


async def run_delta_case(
    prompt: list[int], params: SamplingParams, pauses: list[float]
) -> tuple[list[RequestOutput], RequestOutput]:
    delta = attrs.evolve(params, output_kind=DELTA)
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(step_delay=0.001), log_requests=False, log_stats=False
        ) as engine:
            deltas = await read_slowly(engine, prompt, delta, pauses)
    return deltas, run_alone(prompt, params)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40)
@given(
    params=sampling_params(max_tokens=24, vocab_size=64).filter(
        lambda p: p.seed is not None or p.greedy
    ),
    prompt=st.lists(st.integers(1, 63), min_size=1, max_size=12),
    pauses=st.lists(st.sampled_from([0.0, 0.002, 0.01]), max_size=4),
)
def test_deltas_concatenate_to_the_cumulative_final_output_at_any_pace(
    backend: str, params: SamplingParams, prompt: list[int], pauses: list[float]
) -> None:
    deltas, final = anyio.run(run_delta_case, prompt, params, pauses, backend=backend)
    assert deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    joined = concatenate(deltas)
    for c in final.outputs:
        text, ids, logprobs = joined[c.index]
        assert (text, ids) == (c.text, c.token_ids)
        assert logprobs == c.logprobs
    assert [c.index for c in deltas[-1].outputs] == [c.index for c in final.outputs]
    assert [c.finish_reason for c in deltas[-1].outputs] == [c.finish_reason for c in final.outputs]
    # Prompt logprobs come complete with the first delta that has a token, never after.
    first = next(i for i, d in enumerate(deltas) if any(c.token_ids for c in d.outputs))
    assert deltas[first].prompt_logprobs == final.prompt_logprobs
    assert all(d.prompt_logprobs is None for d in deltas[first + 1 :])


@pytest.mark.anyio
async def test_a_fast_delta_consumer_gets_one_new_token_per_step() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, output_kind=DELTA)
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(step_delay=0.005), log_requests=False, log_stats=False
        ) as engine:
            deltas = await read_slowly(engine, [1, 2, 3], params, [])
    assert [len(d.outputs[0].token_ids) for d in deltas] == [1] * 6
    assert all(len(d.outputs[0].text) == 1 for d in deltas)


@pytest.mark.anyio
async def test_delta_holds_back_text_a_stop_string_may_still_cut() -> None:
    # With stop "zzz" the last three characters are held back until the end.
    params = SamplingParams(
        temperature=0.0, max_tokens=8, ignore_eos=True, stop=["zzz"], output_kind=DELTA
    )
    final = run_alone([1, 2, 3], attrs.evolve(params, output_kind=RequestOutputKind.CUMULATIVE))
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(step_delay=0.005), log_requests=False, log_stats=False
        ) as engine:
            deltas = await read_slowly(engine, [1, 2, 3], params, [])
    assert [d.outputs[0].text for d in deltas[:3]] == ["", "", ""]
    assert len(deltas[3].outputs[0].text) == 1
    assert "".join(d.outputs[0].text for d in deltas) == final.outputs[0].text
    assert len(final.outputs[0].text) == 8


@pytest.mark.anyio
async def test_final_only_yields_one_output_and_abort_still_ends_it() -> None:
    params = SamplingParams(
        temperature=0.0,
        max_tokens=5,
        ignore_eos=True,
        output_kind=corral.RequestOutputKind.FINAL_ONLY,
    )
    with anyio.fail_after(TIMEOUT):
        async with open_engine_from_core(
            fake_core(step_delay=0.002), log_requests=False, log_stats=False
        ) as engine:
            outputs = await read_slowly(engine, [1, 2], params, [])
            long = attrs.evolve(params, max_tokens=10_000)
            stream = engine.generate(None, long, "long", prompt_token_ids=[4])
            await anyio.sleep(0.05)
            await engine.abort("long")
            aborted = [out async for out in stream]
    assert len(outputs) == 1 and outputs[0].finished
    assert outputs[0].outputs[0].token_ids == run_alone([1, 2], params).outputs[0].token_ids
    assert len(aborted) == 1 and aborted[0].outputs[0].finish_reason == "abort"


def test_output_kind_is_validated_and_exported() -> None:
    assert corral.RequestOutputKind is RequestOutputKind
    assert SamplingParams().output_kind is RequestOutputKind.CUMULATIVE
    with pytest.raises(ValueError, match="output_kind"):
        SamplingParams(output_kind=1)  # type: ignore[arg-type]
