"""The offline front door: order, text prompts, n/best_of, stop strings and bad input."""

from __future__ import annotations

from typing import Any

import pytest

from corral.sampling_params import SamplingParams
from tests.model.zoo import ModelZoo

MODEL = "qwen2"


@pytest.fixture(scope="module")
def llm(zoo: ModelZoo) -> Any:
    return zoo.llm(MODEL)


def test_outputs_come_back_in_input_order(llm: Any) -> None:
    prompts = [[5] * n for n in (90, 3, 40, 1)]
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in (2, 9, 5, 7)]
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == prompts
    assert [len(o.outputs[0].token_ids) for o in outputs] == [2, 9, 5, 7]
    assert all(o.finished for o in outputs)


def test_text_prompts_are_tokenized_and_outputs_detokenized(llm: Any) -> None:
    tokenizer = llm.get_tokenizer()
    outputs = llm.generate(
        ["The quick brown fox", "日本語"],
        SamplingParams(temperature=0.0, max_tokens=12, skip_special_tokens=False),
        use_tqdm=False,
    )
    assert outputs[0].prompt == "The quick brown fox"
    assert outputs[0].prompt_token_ids == tokenizer("The quick brown fox").input_ids
    for output in outputs:
        completion = output.outputs[0]
        assert completion.text == tokenizer.decode(completion.token_ids)


def test_text_ending_inside_a_character_equals_full_decode(llm: Any) -> None:
    # Random byte-level samples often stop between the bytes of one character; the
    # bytes the detokenizer held back must still reach the final text.
    tokenizer = llm.get_tokenizer()
    params = [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=1 + seed % 7) for seed in range(24)
    ]
    outputs = llm.generate(
        prompt_token_ids=[[3, 4, 5]] * len(params), sampling_params=params, use_tqdm=False
    )
    for output in outputs:
        completion = output.outputs[0]
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_single_prompt_and_single_id_list_are_accepted(llm: Any) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=3)
    by_text = llm.generate("hello", params, use_tqdm=False)
    ids = by_text[0].prompt_token_ids
    by_ids = llm.generate(None, params, prompt_token_ids=ids, use_tqdm=False)
    assert by_ids[0].outputs[0].token_ids == by_text[0].outputs[0].token_ids


def test_best_of_returns_the_n_most_likely_samples(llm: Any) -> None:
    params = SamplingParams(n=2, best_of=4, temperature=1.0, max_tokens=6, seed=11, logprobs=0)
    first = llm.generate(prompt_token_ids=[[7, 8, 9]], sampling_params=params, use_tqdm=False)[0]
    again = llm.generate(prompt_token_ids=[[7, 8, 9]], sampling_params=params, use_tqdm=False)[0]
    assert len(first.outputs) == 2
    scores = [c.cumulative_logprob for c in first.outputs]
    assert scores == sorted(scores, reverse=True)
    for completion in first.outputs:
        assert completion.logprobs is not None
        chosen = [
            entry[t] for entry, t in zip(completion.logprobs, completion.token_ids, strict=True)
        ]
        assert completion.cumulative_logprob == pytest.approx(sum(chosen), abs=1e-5)
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]


def test_unseeded_sampling_varies(llm: Any) -> None:
    params = SamplingParams(n=6, temperature=1.0, max_tokens=8)
    output = llm.generate(prompt_token_ids=[[4, 5, 6]], sampling_params=params, use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1


def test_stop_string_across_tokens_is_trimmed(llm: Any) -> None:
    tokenizer = llm.get_tokenizer()
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    full = llm.generate(["The quick brown fox"], greedy, use_tqdm=False)[0].outputs[0]
    pieces = [tokenizer.decode([t]) for t in full.token_ids]
    # A two-character stop string made of the last character of one token's text and
    # the first of the next, so it only appears once both tokens are decoded.
    boundary = next(i for i in range(1, len(pieces)) if "\ufffd" not in pieces[i - 1] + pieces[i])
    stop = pieces[boundary - 1][-1] + pieces[boundary][0]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, stop=[stop])
    cut = llm.generate(["The quick brown fox"], params, use_tqdm=False)[0].outputs[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.stop_reason == stop
    assert cut.finish_reason == "stop"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_token_ids": [[]]}, "empty"),
        ({"prompts": [""]}, "empty"),
        ({"prompt_token_ids": [[1, 10**6]]}, "outside the vocabulary"),
        ({"prompt_token_ids": [[3] * 600]}, "max_model_len"),
        ({}, "prompts or prompt_token_ids"),
        ({"prompts": ["a", "b"], "sampling_params": [SamplingParams()]}, "sampling_params"),
    ],
)
def test_bad_input_raises_and_the_engine_keeps_serving(
    llm: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        llm.generate(use_tqdm=False, **kwargs)
    assert not llm.engine_core.has_unfinished_requests()
    ok = llm.generate(
        prompt_token_ids=[[3, 4]], sampling_params=SamplingParams(max_tokens=2), use_tqdm=False
    )
    assert len(ok[0].outputs[0].token_ids) == 2
