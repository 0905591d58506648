"""Hypothesis strategies for property tests against the engine (no model needed)."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from corral.sampling_params import SamplingParams
from corral.testing.detokenizer import ALPHABET


@attrs.frozen
class WorkloadRequest:
    """One request of a drawn workload."""

    prompt_token_ids: list[int]
    params: SamplingParams


@st.composite
def sampling_params(
    draw: st.DrawFn,
    *,
    max_tokens: int = 16,
    max_best_of: int = 3,
    vocab_size: int = 64,
    stop_strings: bool = True,
    logprobs: bool = True,
) -> SamplingParams:
    """Valid `SamplingParams`: greedy or sampled (seeded or not), n <= best_of,
    stop strings over the `FakeDetokenizer` alphabet, stop token ids, min_tokens,
    ignore_eos and (prompt) logprobs."""
    greedy = draw(st.booleans())
    best_of = 1 if greedy else draw(st.integers(1, max_best_of))
    max_new = draw(st.integers(1, max_tokens))
    return SamplingParams(
        n=draw(st.integers(1, best_of)),
        best_of=best_of,
        temperature=0.0 if greedy else draw(st.sampled_from([0.5, 1.0, 1.5])),
        seed=None if greedy else draw(st.none() | st.integers(0, 2**31 - 1)),
        max_tokens=max_new,
        min_tokens=draw(st.integers(0, max_new) | st.just(0)),
        stop=(
            draw(st.lists(st.text(ALPHABET[:8], min_size=1, max_size=2), max_size=2))
            if stop_strings
            else None
        ),
        stop_token_ids=draw(st.lists(st.integers(0, vocab_size - 1), max_size=2)),
        include_stop_str_in_output=draw(st.booleans()),
        ignore_eos=draw(st.booleans()),
        logprobs=draw(st.none() | st.integers(0, 3)) if logprobs else None,
        prompt_logprobs=draw(st.none() | st.integers(0, 2)) if logprobs else None,
    )


@st.composite
def workloads(
    draw: st.DrawFn,
    *,
    max_requests: int = 8,
    max_prompt_len: int = 24,
    vocab_size: int = 64,
    params: st.SearchStrategy[SamplingParams] | None = None,
) -> list[WorkloadRequest]:
    """Requests whose prompts often share prefixes (to exercise the prefix cache)."""
    params = sampling_params(vocab_size=vocab_size) if params is None else params
    tokens = st.integers(1, vocab_size - 1)
    prefixes = draw(st.lists(st.lists(tokens, max_size=max_prompt_len), min_size=1, max_size=3))
    requests = []
    for _ in range(draw(st.integers(1, max_requests))):
        prefix = draw(st.sampled_from(prefixes))
        suffix = draw(st.lists(tokens, min_size=1, max_size=max_prompt_len))
        prompt = (prefix + suffix)[-max_prompt_len:]
        requests.append(WorkloadRequest(prompt, draw(params)))
    return requests
