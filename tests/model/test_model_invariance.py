"""A request's tokens do not depend on its batch, chunking, prefix hits or preemption.

Greedy requests are compared with `compare_with_logprobs` (divergence only at a
near-tie). Seeded samples are compared exactly: these runs are deterministic, and a
seeded draw depends only on (seed, sample index, position) and the logits.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import compare_with_logprobs
from tests.model.zoo import ModelZoo

MODEL = "llama"
WINDOWED = "mistral"
MAX_TOKENS = 16


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1)


def seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=0.9, top_p=0.95, max_tokens=MAX_TOKENS, seed=seed)


def make_requests(
    vocab_size: int, count: int, seed: int, shared_prefix: int = 0
) -> list[tuple[list[int], SamplingParams]]:
    """Prompts of 1..200 tokens, alternating greedy and seeded sampling."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab_size) for _ in range(shared_prefix)]
    requests = []
    for i in range(count):
        prompt = prefix + [rng.randrange(3, vocab_size) for _ in range(rng.randint(1, 200))]
        requests.append((prompt, greedy() if i % 2 == 0 else seeded(1000 + i)))
    return requests


def run(llm: Any, requests: list[tuple[list[int], SamplingParams]]) -> list[RequestOutput]:
    return llm.generate(
        prompt_token_ids=[p for p, _ in requests],
        sampling_params=[s for _, s in requests],
        use_tqdm=False,
    )


def assert_same(
    expected: list[RequestOutput],
    actual: list[RequestOutput],
    params: list[SamplingParams],
    what: str,
) -> None:
    compared = total = 0
    for i, (want, got, p) in enumerate(zip(expected, actual, params, strict=True)):
        want_ids, got_ids = want.outputs[0].token_ids, got.outputs[0].token_ids
        total += len(want_ids)
        if p.seed is None:
            logprobs = want.outputs[0].logprobs
            assert logprobs is not None
            context = f"{what}, request {i}"
            compared += compare_with_logprobs(want_ids, got_ids, logprobs, context=context)
        else:
            assert want_ids == got_ids, f"{what}, seeded request {i}"
            compared += len(want_ids)
    # Near-ties may end a comparison early, but most tokens must have been checked.
    assert compared >= total // 2, f"{what}: only {compared} of {total} tokens compared"


@pytest.fixture(scope="module")
def requests(zoo: ModelZoo) -> list[tuple[list[int], SamplingParams]]:
    return make_requests(zoo.llm(MODEL).model_config.vocab_size, 32, seed=5)


@pytest.fixture(scope="module")
def alone(zoo: ModelZoo, requests: list[tuple[list[int], SamplingParams]]) -> list[RequestOutput]:
    """The first six requests, each run by itself."""
    llm = zoo.llm(MODEL, enable_prefix_caching=False)
    return [run(llm, [request])[0] for request in requests[:6]]


def test_batch_of_32_mixed_requests_matches_each_alone(
    zoo: ModelZoo, requests: list[tuple[list[int], SamplingParams]], alone: list[RequestOutput]
) -> None:
    batched = run(zoo.llm(MODEL, enable_prefix_caching=False), requests)
    assert_same(alone, batched[:6], [p for _, p in requests[:6]], "batch of 32")


@pytest.mark.parametrize("budget", [16, 40])
def test_chunked_prefill_matches_unchunked(
    zoo: ModelZoo,
    requests: list[tuple[list[int], SamplingParams]],
    alone: list[RequestOutput],
    budget: int,
) -> None:
    llm = zoo.llm(MODEL, max_num_batched_tokens=budget, max_num_seqs=4, enable_prefix_caching=False)
    chunked = run(llm, requests[:6])
    assert_same(alone, chunked, [p for _, p in requests[:6]], f"chunks of {budget}")


@pytest.mark.parametrize("budget", [8, 24])
def test_chunked_prefill_with_a_sliding_window_matches_unchunked(
    zoo: ModelZoo, budget: int
) -> None:
    # Chunks shorter than the 48-token window, so a chunk's queries see keys both in
    # and beyond the window's reach across earlier chunks.
    windowed = make_requests(zoo.llm(WINDOWED).model_config.vocab_size, 4, seed=8)
    whole = run(zoo.llm(WINDOWED, enable_prefix_caching=False), windowed)
    llm = zoo.llm(
        WINDOWED, max_num_batched_tokens=budget, max_num_seqs=4, enable_prefix_caching=False
    )
    chunked = run(llm, windowed)
    assert_same(whole, chunked, [p for _, p in windowed], f"windowed chunks of {budget}")


def test_prefix_cache_hits_do_not_change_outputs(zoo: ModelZoo) -> None:
    vocab_size = zoo.llm(MODEL).model_config.vocab_size
    shared = make_requests(vocab_size, 4, seed=6, shared_prefix=80)
    cold = run(zoo.llm(MODEL, enable_prefix_caching=False), shared)
    llm = zoo.llm(MODEL, enable_prefix_caching=True, max_num_seqs=8)
    hits_before = llm.engine_core.stats().prefix_cache_hits
    warm = [run(llm, [request])[0] for request in shared]
    assert llm.engine_core.stats().prefix_cache_hits - hits_before >= 3 * 80 // 16 * 16
    assert_same(cold, warm, [p for _, p in shared], "prefix cache")


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_does_not_change_outputs(
    zoo: ModelZoo, requests: list[tuple[list[int], SamplingParams]], mode: str
) -> None:
    subset = requests[:8]
    reference = run(zoo.llm(MODEL, enable_prefix_caching=False), subset)
    llm = zoo.llm(
        MODEL,
        num_kv_blocks=20,
        max_model_len=256,
        preemption_mode=mode,
        swap_space=0.01,
        enable_prefix_caching=False,
    )
    kv_cache = llm.engine_core.runner.kv_cache
    swapped_blocks: list[int] = []
    swap_out = kv_cache.swap_out

    def counting_swap_out(mapping: list[tuple[int, int]]) -> None:
        swapped_blocks.append(len(mapping))
        swap_out(mapping)

    kv_cache.swap_out = counting_swap_out
    try:
        preempted = run(llm, subset)
    finally:
        kv_cache.swap_out = swap_out
    assert llm.engine_core.stats().num_preemptions > 0
    assert (sum(swapped_blocks) > 0) == (mode == "swap")
    assert_same(reference, preempted, [p for _, p in subset], f"preemption by {mode}")
