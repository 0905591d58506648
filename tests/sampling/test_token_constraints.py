"""logit_bias, allowed_token_ids, bad_words and truncate_prompt_tokens on a real tiny model.

Greedy outputs of the tiny random models are compared token for token; each
comparison is between runs of one model on one batch shape, so no near-tie can
differ (the runs compute identical logits until a constraint changes them).
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.sampling_params import SamplingParams
from corral.tokenization import bind_bad_words
from tests.model.zoo import ModelZoo

MODEL = "qwen2"
PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def llm(zoo: ModelZoo) -> Any:
    return zoo.llm(MODEL)


def generate(llm: Any, prompt: list[int], **params: Any) -> list[int]:
    output = llm.generate(
        prompt_token_ids=prompt, sampling_params=SamplingParams(**params), use_tqdm=False
    )[0]
    return list(output.outputs[0].token_ids)


def greedy(llm: Any, prompt: list[int] = PROMPT, **params: Any) -> list[int]:
    return generate(llm, prompt, temperature=0.0, max_tokens=8, ignore_eos=True, **params)


def test_a_large_positive_bias_forces_its_token(llm: Any) -> None:
    assert greedy(llm, logit_bias={42: 100}) == [42] * 8


def test_a_large_negative_bias_bans_the_greedy_token(llm: Any) -> None:
    base = greedy(llm)
    biased = greedy(llm, logit_bias={str(base[0]): -100})
    assert biased[0] != base[0]
    assert base[0] not in biased


def test_logit_bias_changes_only_its_rows_in_a_batch(llm: Any) -> None:
    plain = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    biased = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logit_bias={9: 100})
    outputs = llm.generate(
        prompt_token_ids=[PROMPT, PROMPT, [3, 4]],
        sampling_params=[plain, biased, plain],
        use_tqdm=False,
    )
    assert list(outputs[0].outputs[0].token_ids) == greedy(llm)[:6]
    assert list(outputs[1].outputs[0].token_ids) == [9] * 6
    assert list(outputs[2].outputs[0].token_ids) == greedy(llm, [3, 4])[:6]


def test_logprobs_stay_those_of_the_raw_distribution(llm: Any) -> None:
    # The contract (corral.core.interface): logprobs are of the model's distribution,
    # before any logits processing.
    output = llm.generate(
        prompt_token_ids=PROMPT,
        sampling_params=SamplingParams(
            temperature=0.0, max_tokens=1, logprobs=1, logit_bias={42: 100}
        ),
        use_tqdm=False,
    )[0]
    completion = output.outputs[0]
    assert completion.token_ids == [42]
    top = completion.logprobs[0]
    assert max(top.values()) > top[42]


def test_allowed_token_ids_restrict_sampled_tokens(llm: Any) -> None:
    allowed = [10, 11, 300]
    for seed in range(4):
        tokens = generate(
            llm, PROMPT, temperature=1.0, seed=seed, max_tokens=8, allowed_token_ids=allowed
        )
        assert set(tokens) <= set(allowed)


def test_allowed_token_ids_pick_the_best_allowed_token_when_greedy(llm: Any) -> None:
    output = llm.generate(
        prompt_token_ids=PROMPT,
        sampling_params=SamplingParams(temperature=0.0, max_tokens=1, logprobs=400),
        use_tqdm=False,
    )[0]
    raw = output.outputs[0].logprobs[0]
    allowed = [17, 23, 301]
    best = max(allowed, key=lambda t: raw[t])
    assert greedy(llm, allowed_token_ids=allowed)[0] == best


def word_of_greedy_tokens(llm: Any, num_tokens: int) -> tuple[list[int], list[int], str]:
    """A text prompt, its greedy tokens and the text of their first ``num_tokens``, for
    the first prompt whose tokens round-trip through that text (random weights often
    emit partial UTF-8 bytes, which do not)."""
    tokenizer = llm.get_tokenizer()
    for text in ["The quick brown", "Structured", "def add", "The lazy", "jumps over", "a + b"]:
        prompt = tokenizer(text).input_ids
        base = greedy(llm, prompt)
        word = tokenizer.decode(base[:num_tokens])
        if tokenizer.encode(word, add_special_tokens=False) == base[:num_tokens]:
            return prompt, base, word
    raise AssertionError(f"no prompt gave a {num_tokens}-token word that round-trips")


def test_bad_words_ban_the_last_token_after_the_prefix(llm: Any) -> None:
    prompt, base, word = word_of_greedy_tokens(llm, 2)
    banned = greedy(llm, prompt, bad_words=[word])
    # The first token is allowed (no prefix yet); after it, the second is banned.
    assert banned[0] == base[0]
    assert banned[1] != base[1]


def test_a_single_token_bad_word_is_never_generated(llm: Any) -> None:
    prompt, base, word = word_of_greedy_tokens(llm, 1)
    assert base[0] not in greedy(llm, prompt, bad_words=[word])


def test_bad_words_are_tokenized_with_and_without_a_leading_space(llm: Any) -> None:
    tokenizer = llm.get_tokenizer()
    params = bind_bad_words(tokenizer, SamplingParams(bad_words=["fox", "fox"]))
    plain = tuple(tokenizer.encode("fox", add_special_tokens=False))
    spaced = tuple(tokenizer.encode(" fox", add_special_tokens=False))
    assert spaced != plain
    expected = [plain] + ([spaced] if len(spaced) == len(plain) else [])
    assert params.bad_words_token_ids == tuple(expected)


def test_truncate_prompt_tokens_keeps_the_last_tokens(llm: Any) -> None:
    long_prompt = list(range(3, 40))
    output = llm.generate(
        prompt_token_ids=long_prompt,
        sampling_params=SamplingParams(
            temperature=0.0, max_tokens=5, ignore_eos=True, truncate_prompt_tokens=6
        ),
        use_tqdm=False,
    )[0]
    assert output.prompt_token_ids == long_prompt[-6:]
    assert list(output.outputs[0].token_ids) == greedy(llm, long_prompt[-6:])[:5]


def test_truncate_prompt_tokens_lets_a_too_long_prompt_run(llm: Any) -> None:
    max_model_len = llm.model_config.max_model_len
    prompt = [5] * (max_model_len + 10)
    with pytest.raises(ValueError, match="max_model_len"):
        greedy(llm, prompt)
    tokens = generate(
        llm, prompt, temperature=0.0, max_tokens=2, ignore_eos=True, truncate_prompt_tokens=-1
    )
    assert len(tokens) == 1  # the context is full after one token


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"logit_bias": {100000: 1.0}}, r"token_id\(s\) \[100000\] in logit_bias contain"),
        ({"logit_bias": {-1: 1.0}}, "out-of-vocab"),
        ({"allowed_token_ids": [1, 100000]}, "allowed_token_ids contains out-of-vocab"),
        ({"truncate_prompt_tokens": 100000}, "greater than max_model_len"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused(
    llm: Any, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        greedy(llm, **params)
    assert greedy(llm) == greedy(llm)  # the engine still serves


def test_max_tokens_zero_scores_the_prompt_only(llm: Any) -> None:
    scored = llm.generate(
        prompt_token_ids=PROMPT,
        sampling_params=SamplingParams(max_tokens=0, prompt_logprobs=2),
        use_tqdm=False,
    )[0]
    generated = llm.generate(
        prompt_token_ids=PROMPT,
        sampling_params=SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=2),
        use_tqdm=False,
    )[0]
    completion = scored.outputs[0]
    assert completion.token_ids == [] and completion.text == ""
    assert completion.finish_reason == "length"
    assert scored.finished
    assert scored.prompt_logprobs is not None and generated.prompt_logprobs is not None
    assert len(scored.prompt_logprobs) == len(PROMPT)
    assert scored.prompt_logprobs[0] is None
    # The logits matrix has one row less without the sample: equal up to matmul rounding.
    for mine, theirs in zip(scored.prompt_logprobs[1:], generated.prompt_logprobs[1:], strict=True):
        assert mine is not None and theirs is not None
        assert mine.keys() == theirs.keys()
        assert all(abs(mine[t] - theirs[t]) < 1e-4 for t in mine)
