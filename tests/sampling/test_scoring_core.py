"""A request with ``max_tokens=0`` in the engine core: prompt logprobs only, nothing sampled."""

from __future__ import annotations

from corral.core import EngineCore
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import make_fake_core


def run(core: EngineCore, ids: list[str]) -> tuple[list[RequestOutput], int]:
    """Step ``core`` until every request finished; the final outputs of ``ids``."""
    finals: dict[str, RequestOutput] = {}
    steps = 0
    while core.has_unfinished_requests():
        steps += 1
        for output in core.step():
            if output.finished:
                finals[output.request_id] = output
    return [finals[i] for i in ids], steps


def test_a_chunked_prompt_is_scored_whole_and_samples_nothing() -> None:
    # A budget of 16 tokens splits the 40-token prompt over three steps.
    core = make_fake_core(max_num_batched_tokens=16, max_num_seqs=4, max_model_len=64)
    prompt = list(range(1, 41))
    core.add_request("score", prompt, SamplingParams(max_tokens=0, prompt_logprobs=1))
    core.add_request("gen", prompt, SamplingParams(max_tokens=2, prompt_logprobs=1))
    (scored, generated), _ = run(core, ["score", "gen"])
    assert scored.outputs[0].token_ids == []
    assert scored.outputs[0].finish_reason == "length"
    assert scored.prompt_logprobs == generated.prompt_logprobs
    assert len(scored.prompt_logprobs or []) == len(prompt)
    stats = core.stats()
    assert stats.num_generation_tokens == 2  # the generating request's only
    assert stats.num_free_blocks == stats.num_total_blocks


def test_scoring_requests_beside_decoding_ones_leave_them_unchanged() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    alone = make_fake_core()
    alone.add_request("a", [3, 4, 5], params)
    (expected,), _ = run(alone, ["a"])
    core = make_fake_core()
    core.add_request("a", [3, 4, 5], params)
    for i in range(3):
        core.add_request(f"s{i}", [7, 8, 9, i + 1], SamplingParams(max_tokens=0, prompt_logprobs=0))
    outputs, _ = run(core, ["a", "s0", "s1", "s2"])
    assert outputs[0].outputs[0].token_ids == expected.outputs[0].token_ids
    assert all(o.outputs[0].token_ids == [] for o in outputs[1:])
