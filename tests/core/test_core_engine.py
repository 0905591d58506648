"""EngineCore with the fake model: the behaviours the engine promises."""

import pytest

from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import make_fake_core, run_to_completion

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def completions(out: RequestOutput) -> list:
    return [(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in out.outputs]


def alone(prompt: list[int], params: SamplingParams, **config: object) -> RequestOutput:
    core = make_fake_core(**config)
    core.add_request("x", prompt, params)
    return run_to_completion(core)["x"]


def test_a_request_runs_to_max_tokens_and_frees_its_blocks() -> None:
    core = make_fake_core()
    core.add_request("a", [1, 2, 3, 4, 5], GREEDY)
    out = run_to_completion(core)["a"]
    assert len(out.outputs[0].token_ids) == 8
    assert out.outputs[0].finish_reason == "length"
    assert len(out.outputs[0].text) == 8
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_generation_tokens == 8 and stats.num_prompt_tokens == 5


def test_outputs_are_cumulative_snapshots() -> None:
    core = make_fake_core()
    core.add_request("a", [1, 2, 3], GREEDY)
    lengths = []
    while core.has_unfinished_requests():
        lengths += [len(o.outputs[0].token_ids) for o in core.step()]
    assert lengths == list(range(1, 9))


def test_a_duplicate_live_request_id_is_rejected() -> None:
    core = make_fake_core()
    core.add_request("a", [1, 2], GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        core.add_request("a", [1, 2], GREEDY)
    run_to_completion(core)
    core.add_request("a", [1, 2], GREEDY)


def test_bad_requests_raise_value_error_naming_the_field() -> None:
    core = make_fake_core()
    with pytest.raises(ValueError, match="prompt_token_ids"):
        core.add_request("a", [], GREEDY)
    with pytest.raises(ValueError, match="prefix_pos"):
        core.add_request("a", [1, 2], GREEDY, prefix_pos=3)
    without_text = make_fake_core(detokenizer=None)
    with pytest.raises(ValueError, match="stop strings need a detokenizer"):
        without_text.add_request("a", [1], SamplingParams(stop="x"))


def test_a_too_long_prompt_finishes_with_an_error_and_the_engine_keeps_going() -> None:
    core = make_fake_core(max_model_len=16)
    core.add_request("long", list(range(1, 18)), GREEDY)
    core.add_request("ok", [1, 2, 3], GREEDY)
    final = run_to_completion(core)
    assert final["long"].outputs[0].finish_reason == "abort"
    assert "longer than max_model_len=16" in (final["long"].error or "")
    assert final["ok"].outputs[0].finish_reason == "length" and final["ok"].error is None


def test_a_prompt_larger_than_the_cache_finishes_with_an_error() -> None:
    core = make_fake_core(num_kv_blocks=2, block_size=4, max_model_len=64)
    core.add_request("big", list(range(1, 10)), GREEDY)
    out = run_to_completion(core)["big"]
    assert out.outputs[0].finish_reason == "abort" and "KV blocks" in (out.error or "")


def test_generation_stops_past_max_model_len() -> None:
    out = alone(
        [1, 2, 3], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True), max_model_len=10
    )
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 11


@pytest.mark.parametrize("moment", [0, 1, 2, 5])
def test_abort_at_any_moment_frees_everything_and_is_idempotent(moment: int) -> None:
    core = make_fake_core(max_num_batched_tokens=16, num_kv_blocks=12)
    core.add_request("a", list(range(1, 30)), GREEDY)  # a chunked prefill of 2 steps
    core.add_request("b", list(range(1, 30)), SamplingParams(n=2, seed=1, max_tokens=8))
    core.add_request("c", [5, 6], GREEDY)
    for _ in range(moment):
        core.step()
    core.abort_request(["a", "b"])
    core.abort_request("a")
    core.abort_request("unknown")
    outputs = {o.request_id: o for o in core.step()}
    assert outputs["a"].finished and outputs["a"].outputs[0].finish_reason == "abort"
    assert outputs["b"].finished
    assert {c.finish_reason for c in outputs["b"].outputs} == {"abort"}
    core.abort_request("a")
    assert "a" not in {o.request_id for o in core.step()}
    run_to_completion(core)
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not core.has_unfinished_requests()


def test_eos_stops_unless_ignored() -> None:
    runner_probe = alone([7, 8], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    eos = runner_probe.outputs[0].token_ids[0]
    stopped = alone([7, 8], SamplingParams(temperature=0, max_tokens=5), eos_token_ids=[eos])
    assert stopped.outputs[0].token_ids == [eos]
    assert stopped.outputs[0].finish_reason == "stop" and stopped.outputs[0].stop_reason is None


def test_stop_token_ids_stop_with_the_token_as_reason() -> None:
    free = alone([3, 4], GREEDY).outputs[0].token_ids
    out = alone(
        [3, 4],
        SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[free[2]], ignore_eos=True),
    )
    first = free.index(free[2])
    assert out.outputs[0].token_ids == free[: first + 1]
    assert out.outputs[0].stop_reason == free[2]


def test_min_tokens_defers_stop_conditions() -> None:
    free = alone([3, 4], GREEDY).outputs[0].token_ids
    params = SamplingParams(
        temperature=0, max_tokens=8, min_tokens=8, stop_token_ids=[free[0]], ignore_eos=True
    )
    assert alone([3, 4], params).outputs[0].finish_reason == "length"


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_cut_the_text(include: bool) -> None:
    text = alone([3, 4], GREEDY).outputs[0].text
    stop = text[2:4]
    params = SamplingParams(
        temperature=0, max_tokens=8, stop=stop, ignore_eos=True, include_stop_str_in_output=include
    )
    out = alone([3, 4], params).outputs[0]
    cut = text.index(stop)
    assert out.text == (text[: cut + 2] if include else text[:cut])
    assert out.finish_reason == "stop" and out.stop_reason == stop


def test_best_of_forks_after_the_prompt_and_returns_the_n_best() -> None:
    core = make_fake_core()
    core.add_request(
        "b",
        [1, 2, 3, 4, 5, 6],
        SamplingParams(n=2, best_of=3, seed=7, max_tokens=6, ignore_eos=True),
    )
    out = run_to_completion(core)["b"]
    assert len(out.outputs) == 2
    logprobs = [c.cumulative_logprob for c in out.outputs]
    assert logprobs == sorted(logprobs, reverse=True)
    assert len({tuple(c.token_ids) for c in out.outputs}) == 2
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_logprobs_and_prompt_logprobs_are_returned() -> None:
    params = SamplingParams(
        temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=1, ignore_eos=True
    )
    out = alone(list(range(1, 11)), params, max_num_batched_tokens=16, max_num_seqs=4)
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == 10
    assert out.prompt_logprobs[0] is None
    assert all(
        e is not None and t in e
        for t, e in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:], strict=True)
    )
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == 3
    assert sum(
        lp[t] for t, lp in zip(completion.token_ids, completion.logprobs, strict=True)
    ) == pytest.approx(completion.cumulative_logprob)


def test_chunked_prompt_logprobs_equal_unchunked_ones() -> None:
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=2, ignore_eos=True)
    prompt = list(range(1, 40))
    chunked = alone(prompt, params, max_num_batched_tokens=8, max_num_seqs=4)
    whole = alone(prompt, params, max_num_batched_tokens=64)
    assert chunked.prompt_logprobs == whole.prompt_logprobs
