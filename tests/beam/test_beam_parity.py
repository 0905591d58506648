"""Beam search against transformers' ``generate(num_beams=...)``: sequences and scores.

The prompts and models are ones whose beams are far from ties (checked: the runs
agree exactly); `assert_same_beams` still accepts a swap at a near-tie of scores.
"With EOS" uses a token the model actually picks as an extra EOS (transformers'
``eos_token_id=[eos, t]``, corral's ``stop_token_ids=[t]``), since a random-weight
model rarely emits its real EOS; both then keep ``(1 + 2) * W`` candidates a step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from corral.sampling_params import SamplingParams
from tests.beam.helpers import Hypothesis, assert_same_beams, beam_score, hypotheses
from tests.model.zoo import ModelZoo

MAX_TOKENS = 10
PROMPTS = ["The quick brown fox", "def add(a, b):"]
# (num_beams W, num_return_sequences k, length_penalty, early_stopping)
CASES = [
    (2, 1, 1.0, False),
    (2, 2, 0.5, True),
    (4, 2, 1.0, True),
    (4, 3, -1.0, False),
    (4, 4, 2.0, "never"),
    (4, 4, 0.0, "never"),
]


def _hf_beams(
    zoo: ModelZoo, model: str, prompt: list[int], case: tuple[Any, ...], eos: list[int]
) -> list[Hypothesis]:
    width, k, length_penalty, early_stopping = case
    tokenizer = zoo.tokenizer
    with torch.no_grad():
        result = zoo.hf_model(model).generate(
            torch.tensor([prompt]),
            num_beams=width,
            num_return_sequences=k,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            do_sample=False,
            max_new_tokens=MAX_TOKENS,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    beams = []
    for row, score in zip(result.sequences.tolist(), result.sequences_scores.tolist(), strict=True):
        tokens = row[len(prompt) :]
        ends = [i for i, t in enumerate(tokens) if t in eos]
        if ends:
            tokens = tokens[: ends[0] + 1]
        beams.append((tuple(tokens), score))
    return beams


def _extra_eos(zoo: ModelZoo, model: str, prompt: list[int]) -> int:
    """A token the best greedy-ish beam picks third: as an EOS it ends some beams early."""
    (tokens, _), *_ = _hf_beams(
        zoo, model, prompt, (2, 1, 1.0, False), [zoo.tokenizer.eos_token_id]
    )
    return tokens[2]


@pytest.mark.parametrize("model", ["llama", "gpt2"])
@pytest.mark.parametrize("with_eos", [False, True], ids=["no-eos", "eos"])
def test_beam_search_matches_transformers(beam_zoo: ModelZoo, model: str, with_eos: bool) -> None:
    llm = beam_zoo.llm(model)
    eos = beam_zoo.tokenizer.eos_token_id
    stopped = 0
    for text in PROMPTS:
        prompt = beam_zoo.tokenizer.encode(text)
        extra = [_extra_eos(beam_zoo, model, prompt)] if with_eos else []
        params = [
            SamplingParams(
                use_beam_search=True,
                best_of=width,
                n=k,
                temperature=0.0,
                max_tokens=MAX_TOKENS,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
                stop_token_ids=extra,
            )
            for width, k, length_penalty, early_stopping in CASES
        ]
        # All cases of a prompt run batched together.
        outputs = llm.generate(
            prompt_token_ids=[prompt] * len(CASES), sampling_params=params, use_tqdm=False
        )
        for case, output in zip(CASES, outputs, strict=True):
            expected = _hf_beams(beam_zoo, model, prompt, case, [eos, *extra])
            assert_same_beams(
                expected, hypotheses(output, case[2]), context=f"{model} {text!r} {case}"
            )
            for completion in output.outputs:
                assert completion.finish_reason in ("stop", "length")
                if completion.finish_reason == "stop":
                    stopped += 1
                    assert completion.token_ids[-1] in (eos, *extra)
                else:
                    assert len(completion.token_ids) == MAX_TOKENS
    # The EOS cases really end beams early (and the others never do here).
    assert (stopped > 0) == with_eos


def test_cumulative_logprob_is_the_sum_of_token_logprobs(beam_zoo: ModelZoo) -> None:
    llm = beam_zoo.llm("llama")
    params = SamplingParams(
        use_beam_search=True, best_of=3, n=3, temperature=0.0, max_tokens=6, logprobs=2
    )
    (output,) = llm.generate(PROMPTS[:1], params, use_tqdm=False)
    greedy = llm.generate(
        PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=6, logprobs=2), use_tqdm=False
    )[0].outputs[0]
    assert [c.index for c in output.outputs] == [0, 1, 2]
    scores = [beam_score(c.token_ids, c.cumulative_logprob, 1.0) for c in output.outputs]
    assert scores == sorted(scores, reverse=True)
    for completion in output.outputs:
        assert completion.logprobs is not None and len(completion.logprobs) == 6
        total = sum(
            entry[t] for entry, t in zip(completion.logprobs, completion.token_ids, strict=True)
        )
        assert completion.cumulative_logprob == pytest.approx(total, abs=1e-5)
        assert all(len(entry) in (2, 3) for entry in completion.logprobs)
    # The first token's distribution is the prompt's, as greedy decoding sees it.
    first = output.outputs[0].logprobs
    assert first is not None and greedy.logprobs is not None
    top_greedy = greedy.logprobs[0]
    for token, logprob in top_greedy.items():
        if token in first[0]:
            assert first[0][token] == pytest.approx(logprob, abs=1e-4)
