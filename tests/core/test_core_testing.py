"""corral.testing: the fake model's promises (determinism, fault injection, cache checks)."""

import time

import pytest
from hypothesis import given, settings

from corral.errors import NotSupportedError
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import (
    FakeDetokenizer,
    FakeModelError,
    FakeModelRunner,
    WorkloadRequest,
    make_fake_core,
    run_to_completion,
    workloads,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def completions(out: RequestOutput) -> list:
    return [(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in out.outputs]


def alone(prompt: list[int], params: SamplingParams, **config: object) -> RequestOutput:
    core = make_fake_core(**config)
    core.add_request("x", prompt, params)
    return run_to_completion(core)["x"]


def test_injected_failures_surface_from_step() -> None:
    core = make_fake_core(FakeModelRunner(block_size=4, fail_at_step=2))
    core.add_request("a", [1, 2], GREEDY)
    core.step()
    with pytest.raises(FakeModelError, match="step 2"):
        core.step()
    poisoned = make_fake_core(FakeModelRunner(block_size=4, fail_on_token=13))
    poisoned.add_request("a", [1, 13], GREEDY)
    with pytest.raises(FakeModelError, match="token 13"):
        poisoned.step()


def test_the_fake_model_notices_a_corrupted_block_table() -> None:
    runner = FakeModelRunner(block_size=4)
    core = make_fake_core(runner)
    core.add_request("a", list(range(1, 10)), GREEDY)
    expected = alone(list(range(1, 10)), GREEDY)
    core.step()
    seq = core.scheduler.running[0]
    seq.block_table[0], seq.block_table[1] = seq.block_table[1], seq.block_table[0]
    got = run_to_completion(core)["a"]
    assert got.outputs[0].token_ids[1:] != expected.outputs[0].token_ids[1:]


def test_an_early_snapshot_does_not_change_later() -> None:
    core = make_fake_core()
    core.add_request(
        "a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=6, logprobs=1, ignore_eos=True)
    )
    first = core.step()[0]
    run_to_completion(core)
    assert len(first.outputs[0].token_ids) == 1
    logprobs = first.outputs[0].logprobs
    assert logprobs is not None and len(logprobs) == 1


def test_seeded_samples_repeat_and_depend_on_the_seed() -> None:
    def tokens(seed: int) -> list[int]:
        params = SamplingParams(seed=seed, max_tokens=8, ignore_eos=True)
        return alone([1, 2, 3], params).outputs[0].token_ids

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


class _DropsCopies(FakeModelRunner):
    def execute(self, scheduler_output):  # type: ignore[no-untyped-def]
        scheduler_output.blocks_to_copy = []
        return super().execute(scheduler_output)


class _DropsSwapIns(FakeModelRunner):
    def execute(self, scheduler_output):  # type: ignore[no-untyped-def]
        scheduler_output.blocks_to_swap_in = []
        return super().execute(scheduler_output)


def test_the_fake_model_notices_a_missing_copy_on_write() -> None:
    params = SamplingParams(n=3, seed=0, max_tokens=6, ignore_eos=True)
    expected = alone(list(range(1, 11)), params)
    core = make_fake_core(_DropsCopies(block_size=4))
    core.add_request("x", list(range(1, 11)), params)
    assert completions(run_to_completion(core)["x"]) != completions(expected)


def test_the_fake_model_notices_a_missing_swap_in() -> None:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    config = {"num_kv_blocks": 14, "max_num_seqs": 6, "preemption_mode": "swap"}
    prompts = [[i, i + 1, i + 2] for i in range(1, 7)]
    core = make_fake_core(_DropsSwapIns(block_size=4), **config)
    for i, prompt in enumerate(prompts):
        core.add_request(str(i), prompt, params)
    final = run_to_completion(core)
    got = [completions(final[str(i)]) for i in range(6)]
    assert got != [completions(alone(p, params, **config)) for p in prompts]


def test_step_delay_makes_a_slow_model() -> None:
    core = make_fake_core(FakeModelRunner(block_size=4, step_delay=0.02))
    core.add_request("a", [1], GREEDY)
    start = time.perf_counter()
    core.step()
    assert time.perf_counter() - start >= 0.02


def test_the_fake_detokenizer_hides_special_tokens_when_asked() -> None:
    detokenizer = FakeDetokenizer(special_token_ids=[0])
    assert detokenizer.text(0) == "" and detokenizer.text(0, skip_special_tokens=False) == "<0>"
    assert detokenizer.text(1) == "b" and detokenizer.text(27) == "b"


def test_a_logits_processor_is_refused_by_the_fake_model() -> None:
    core = make_fake_core()
    core.add_request("a", [1], SamplingParams(max_tokens=2, logits_processors=[lambda ids, x: x]))
    with pytest.raises(NotSupportedError, match="logits_processors"):
        core.step()


@settings(max_examples=30)
@given(workload=workloads(max_requests=4))
def test_drawn_workloads_run_to_completion(workload: list[WorkloadRequest]) -> None:
    core = make_fake_core()
    for i, request in enumerate(workload):
        core.add_request(str(i), request.prompt_token_ids, request.params)
    final = run_to_completion(core)
    assert set(final) == {str(i) for i in range(len(workload))}
    assert all(
        len(out.outputs) == request.params.n
        for out, request in zip(
            (final[str(i)] for i in range(len(workload))), workload, strict=True
        )
    )
