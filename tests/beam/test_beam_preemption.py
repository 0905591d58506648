"""Beam search gives the same beams however its sequences are preempted.

A tiny KV cache forces beam groups to be preempted (by recompute or by swapping)
and split, with some beams of a group out while the others run; the results must
equal those of a cache that holds everything (up to score near-ties).
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.llm import LLM
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from tests.beam.helpers import assert_same_beams, hypotheses
from tests.model.zoo import ModelZoo

PROMPTS = [
    "The quick brown fox",
    "def add(a, b):",
    "Structured concurrency",
    "The lazy dog",
    "every task inside",
]
PARAMS = [
    SamplingParams(use_beam_search=True, best_of=4, n=2, temperature=0.0, max_tokens=12),
    SamplingParams(
        use_beam_search=True, best_of=3, n=3, temperature=0.0, max_tokens=12, early_stopping=True
    ),
    SamplingParams(
        use_beam_search=True,
        best_of=4,
        n=4,
        temperature=0.0,
        max_tokens=12,
        length_penalty=0.5,
        early_stopping="never",
    ),
    SamplingParams(use_beam_search=True, best_of=2, n=1, temperature=0.0, max_tokens=12),
    # A plain request in the same batch competes for the same blocks.
    SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
]
TINY_CACHE = {"block_size": 4, "num_kv_blocks": 24, "max_model_len": 64}


def _run(llm: LLM) -> list[RequestOutput]:
    return llm.generate(PROMPTS, PARAMS, use_tqdm=False)


@pytest.fixture(scope="module")
def reference(beam_zoo: ModelZoo) -> list[RequestOutput]:
    return _run(beam_zoo.llm("llama", block_size=4))


@pytest.mark.parametrize(
    "engine_args",
    [
        {"preemption_mode": "recompute"},
        {"preemption_mode": "swap"},
        {"preemption_mode": "recompute", "enable_prefix_caching": True},
        # Recomputed beams take several steps to prefill while their siblings wait.
        {"preemption_mode": "recompute", "max_num_batched_tokens": 12, "max_num_seqs": 12},
    ],
    ids=["recompute", "swap", "recompute-prefix-cache", "recompute-chunked"],
)
def test_preemption_and_a_tiny_cache_give_the_same_beams(
    beam_zoo: ModelZoo, reference: list[RequestOutput], engine_args: dict[str, Any]
) -> None:
    llm = beam_zoo.llm("llama", **TINY_CACHE, **engine_args)
    before = llm.engine_core.stats().num_preemptions
    outputs = _run(llm)
    assert llm.engine_core.stats().num_preemptions > before
    for prompt, params, want, got in zip(PROMPTS, PARAMS, reference, outputs, strict=True):
        context = f"{prompt!r} {engine_args}"
        if params.use_beam_search:
            assert_same_beams(
                hypotheses(want, params.length_penalty),
                hypotheses(got, params.length_penalty),
                context=context,
            )
        else:
            assert got.outputs[0].token_ids == want.outputs[0].token_ids, context
    stats = llm.engine_core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not llm.engine_core.scheduler.running and not llm.engine_core.scheduler.swapped
