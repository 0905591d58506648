"""An engine actor's step outputs cross the process boundary as deltas: decoded, they
equal the core's own snapshots, step by step and afterwards (no Ray needed)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.engine_core import EngineCore
from corral.distributed.output_deltas import OutputDecoder, OutputEncoder
from corral.outputs import CompletionOutput, RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import make_fake_core, workloads
from corral.testing.strategies import WorkloadRequest
from tests.model.zoo import ModelZoo

# Beam search (its completions move between beams) and plain requests with text,
# logprobs and prompt logprobs, in a cache small enough to preempt them.
REAL_MODEL_PARAMS = [
    SamplingParams(use_beam_search=True, best_of=4, n=2, temperature=0.0, max_tokens=12),
    SamplingParams(
        use_beam_search=True, best_of=3, n=3, temperature=0.0, max_tokens=10, logprobs=1
    ),
    SamplingParams(temperature=0.0, max_tokens=12, logprobs=2, prompt_logprobs=1),
    SamplingParams(n=2, best_of=3, temperature=1.0, seed=1, max_tokens=12, stop=["a", "e"]),
]


def _round_trip(
    core: EngineCore,
    requests: list[tuple[list[int], SamplingParams]],
    abort_at: list[tuple[int, int]] = [],  # noqa: B006 - never mutated
) -> None:
    """Step ``core`` to the end, checking every decoded snapshot against the core's."""
    encoder, decoder = OutputEncoder(), OutputDecoder()
    for i, (prompt_token_ids, params) in enumerate(requests):
        core.add_request(str(i), prompt_token_ids, params)
        encoder.add(str(i), params.use_beam_search)
        decoder.add(str(i), None, prompt_token_ids)
    pairs: list[tuple[RequestOutput, RequestOutput]] = []
    step = 0
    while core.has_unfinished_requests():
        core.abort_request([str(i) for at, i in abort_at if at == step])
        outputs = core.step()
        # Through pickle, as Ray carries them.
        decoded = decoder.decode(pickle.loads(pickle.dumps(encoder.encode(outputs))))
        assert decoded == outputs
        pairs.extend(zip(decoded, outputs, strict=True))
        step += 1
    assert not decoder
    # Snapshots handed out earlier did not change as the requests went on.
    for ours, cores in pairs:
        assert ours == cores


@settings(max_examples=60, deadline=None)
@given(
    workload=workloads(),
    abort_at=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 7)), max_size=3),
)
def test_decoded_snapshots_equal_the_cores(
    workload: list[WorkloadRequest], abort_at: list[tuple[int, int]]
) -> None:
    requests = [(r.prompt_token_ids, r.params) for r in workload]
    _round_trip(make_fake_core(), requests, abort_at)


def test_decoded_beams_and_logprobs_equal_the_cores(zoo: ModelZoo) -> None:
    llm = zoo.llm("llama", block_size=4, num_kv_blocks=24, max_model_len=64)
    prompts = [[5 + i, 40 + 3 * i, 7, 200 - i, 11 + i, 9] for i in range(len(REAL_MODEL_PARAMS))]
    _round_trip(llm.engine_core, list(zip(prompts, REAL_MODEL_PARAMS, strict=True)))
    assert llm.engine_core.stats().num_preemptions > 0


def test_a_request_sends_only_its_new_tokens() -> None:
    core = make_fake_core()
    encoder, decoder = OutputEncoder(), OutputDecoder()
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    core.add_request("a", list(range(1, 40)), params)
    encoder.add("a", use_beam_search=False)
    decoder.add("a", None, list(range(1, 40)))
    sizes = []
    while core.has_unfinished_requests():
        deltas = encoder.encode(core.step())
        sizes.extend(len(completion[2]) for delta in deltas for completion in delta[1])
        decoder.decode(deltas)
    assert sum(sizes) == 6
    assert max(sizes) == 1


def _snapshot(request_id: str, token_ids: list[int], text: str) -> RequestOutput:
    completion = CompletionOutput(0, text, token_ids, -1.0, None)
    return RequestOutput(request_id, None, [1, 2], None, [completion], False)


@pytest.mark.parametrize("use_beam_search", [True, False])
def test_a_completion_that_changes_its_past_arrives_whole(use_beam_search: bool) -> None:
    # A beam's history is replaced when its index moves to another beam; a text may
    # lose its tail. Neither happens in a plain request's tokens.
    encoder, decoder = OutputEncoder(), OutputDecoder()
    encoder.add("r", use_beam_search)
    decoder.add("r", None, [1, 2])
    steps = [([7, 8], "ab"), ([7, 8, 9], "aX")]
    if use_beam_search:
        steps.append(([7, 5, 6, 4], "a"))
    for token_ids, text in steps:
        snapshot = _snapshot("r", token_ids, text)
        assert decoder.decode(encoder.encode([snapshot])) == [snapshot]
