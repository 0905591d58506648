"""Scheduling: FCFS, budgets, prefix cache, preemption and swapping, with the fake model."""

import pytest

from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import FakeModelRunner, make_fake_core, run_to_completion

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def completions(out: RequestOutput) -> list:
    return [(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in out.outputs]


def alone(prompt: list[int], params: SamplingParams, **config: object) -> RequestOutput:
    core = make_fake_core(**config)
    core.add_request("x", prompt, params)
    return run_to_completion(core)["x"]


def test_prefix_cache_hits_are_counted_and_do_not_change_outputs() -> None:
    core = make_fake_core()
    prefix = list(range(1, 13))
    core.add_request("a", [*prefix, 20], GREEDY)
    first = run_to_completion(core)["a"]
    core.add_request("b", [*prefix, 20], GREEDY)
    second = run_to_completion(core)["b"]
    assert completions(first) == completions(second)
    stats = core.stats()
    assert stats.prefix_cache_hits == 12 and stats.prefix_cache_queries == 26


def test_fcfs_admission_order() -> None:
    core = make_fake_core(max_num_seqs=1, max_num_batched_tokens=16)
    for name in "abc":
        core.add_request(
            name, [1, 2, 3], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
        )
    order = []
    while core.has_unfinished_requests():
        order += [o.request_id for o in core.step() if o.finished]
    assert order == ["a", "b", "c"]


def test_budget_and_max_num_seqs_are_respected_every_step() -> None:
    class Recorder(FakeModelRunner):
        def __init__(self) -> None:
            super().__init__(block_size=4)
            self.batches: list[tuple[int, int]] = []

        def execute(self, scheduler_output):  # type: ignore[no-untyped-def]
            self.batches.append((scheduler_output.num_batched_tokens, len(scheduler_output.seqs)))
            return super().execute(scheduler_output)

    runner = Recorder()
    core = make_fake_core(runner, max_num_seqs=3, max_num_batched_tokens=10)
    for i in range(6):
        core.add_request(str(i), list(range(1, 12)), GREEDY)
    run_to_completion(core)
    assert max(tokens for tokens, _ in runner.batches) <= 10
    assert max(seqs for _, seqs in runner.batches) <= 3
    assert max(tokens for tokens, _ in runner.batches) == 10


def test_decodes_come_before_prefill_chunks_in_the_batch() -> None:
    core = make_fake_core(max_num_batched_tokens=16)
    core.add_request("a", [1, 2, 3], GREEDY)
    core.step()
    core.add_request("b", list(range(1, 30)), GREEDY)
    scheduled = core.scheduler.schedule()
    assert scheduled.num_new_tokens[0] == 1 and scheduled.num_new_tokens[1] == 15


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_does_not_change_outputs(mode: str) -> None:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompts = [[i, i + 1, i + 2] for i in range(1, 7)]
    expected = [completions(alone(p, params)) for p in prompts]
    core = make_fake_core(num_kv_blocks=14, max_num_seqs=6, preemption_mode=mode)
    for i, prompt in enumerate(prompts):
        core.add_request(str(i), prompt, params)
    final = run_to_completion(core)
    assert core.stats().num_preemptions > 0
    assert [completions(final[str(i)]) for i in range(6)] == expected


def test_swap_falls_back_to_recompute_when_the_host_pool_is_full() -> None:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    core = make_fake_core(
        num_kv_blocks=14, num_host_blocks=1, max_num_seqs=6, preemption_mode="swap"
    )
    for i in range(6):
        core.add_request(str(i), [i + 1, i + 2, i + 3], params)
    seen_waiting_after_preemption = False
    while core.has_unfinished_requests():
        core.step()
        stats = core.stats()
        if stats.num_preemptions and stats.num_waiting:
            seen_waiting_after_preemption = True
    assert seen_waiting_after_preemption
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_a_sequence_outgrowing_the_whole_cache_finishes_with_an_error() -> None:
    core = make_fake_core(num_kv_blocks=3, block_size=4, max_model_len=64)
    core.add_request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    out = run_to_completion(core)["a"]
    assert out.outputs[0].finish_reason == "abort" and "KV blocks" in (out.error or "")
    assert len(out.outputs[0].token_ids) == 12 - 3 + 1


@pytest.mark.parametrize("prefix_pos", [None, 8])
def test_prefix_pos_keeps_the_shared_prefix_cached_longest(prefix_pos: int | None) -> None:
    core = make_fake_core(block_size=4, num_kv_blocks=8, max_num_seqs=2)
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    shared = list(range(1, 9))
    core.add_request("a", [*shared, 9], one, prefix_pos=prefix_pos)
    run_to_completion(core)
    core.add_request("d", [*range(101, 109), 109], one)  # cached later than a's blocks
    run_to_completion(core)
    core.add_request("e", list(range(201, 225)), one)  # needs 6 of the 8 blocks
    run_to_completion(core)
    hits = core.stats().prefix_cache_hits
    core.add_request("c", [*shared, 9], one)
    run_to_completion(core)
    assert core.stats().prefix_cache_hits - hits == (8 if prefix_pos else 0)


def test_prompt_logprobs_requests_are_never_served_from_the_prefix_cache() -> None:
    core = make_fake_core()
    prompt = list(range(1, 14))
    core.add_request("a", prompt, GREEDY)
    run_to_completion(core)
    hits = core.stats().prefix_cache_hits
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=0, ignore_eos=True)
    core.add_request("b", prompt, params)
    out = run_to_completion(core)["b"]
    assert core.stats().prefix_cache_hits == hits
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(prompt)


@pytest.mark.parametrize(("watermark", "admitted_together"), [(0.0, True), (0.25, False)])
def test_the_watermark_keeps_blocks_free_when_admitting(
    watermark: float, admitted_together: bool
) -> None:
    core = make_fake_core(block_size=4, num_kv_blocks=8, max_num_seqs=2, watermark=watermark)
    core.add_request(
        "a", [1, 2, 3, 4], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    )
    core.add_request("b", list(range(1, 25)), SamplingParams(temperature=0, max_tokens=1))
    core.step()
    assert (core.stats().num_waiting == 0) == admitted_together
    run_to_completion(core)


def test_best_of_samples_share_prompt_blocks_until_they_write() -> None:
    core = make_fake_core(block_size=4)
    params = SamplingParams(n=3, seed=0, max_tokens=4, ignore_eos=True)
    core.add_request("a", list(range(1, 11)), params)  # two full blocks and a partial one
    core.step()
    seqs = core.scheduler.running
    assert len(seqs) == 3
    assert len({tuple(seq.block_table) for seq in seqs}) == 1
    scheduled = core.scheduler.schedule()
    assert len(scheduled.blocks_to_copy) == 2  # the last writer keeps the original
    assert len({seq.block_table[0] for seq in seqs}) == 1
    assert len({seq.block_table[2] for seq in seqs}) == 3
