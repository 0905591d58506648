"""Validation of the token-constraint fields of `SamplingParams` (vLLM's rules and messages),
and the pure helpers behind them."""

from __future__ import annotations

from typing import Any

import pytest

from corral.config import CoreConfig
from corral.core.validation import validate_request
from corral.model.logits_transforms import bad_word_bans
from corral.sampling_params import SamplingParams
from corral.tokenization import truncate_prompt

CONFIG = CoreConfig(
    num_kv_blocks=16, max_model_len=64, max_num_batched_tokens=256, max_num_seqs=8, vocab_size=100
)


def test_logit_bias_keys_become_ints_and_biases_are_clamped() -> None:
    params = SamplingParams(logit_bias={"5": 250.0, 7: -101, "9": 0.5})
    assert params.logit_bias == {5: 100.0, 7: -100.0, 9: 0.5}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"logit_bias": {"x": 1.0}}, "cannot be converted to integer token IDs: ['x']"),
        ({"logit_bias": {"1": float("nan")}}, "logit_bias must be a mapping"),
        ({"allowed_token_ids": []}, "allowed_token_ids is not None and empty!"),
        ({"allowed_token_ids": [-3]}, "allowed_token_ids contains out-of-vocab token id!"),
        ({"bad_words": ["ok", ""]}, "bad_words cannot contain an empty string"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens must be an integer >= 1 or -1"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens must be an integer >= 1 or -1"),
        ({"max_tokens": 0}, "max_tokens must be at least 1 unless prompt_logprobs is set"),
        ({"max_tokens": -1, "prompt_logprobs": 1}, "max_tokens must be at least 1, 0"),
        ({"max_tokens": 0, "prompt_logprobs": 1, "n": 2}, "best_of must be 1 with max_tokens=0"),
    ],
)
def test_bad_values_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        SamplingParams(**fields)
    assert message in str(info.value)


def test_bad_words_are_deduplicated_in_order() -> None:
    assert SamplingParams(bad_words=["b", "a", "b"]).bad_words == ("b", "a")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(logit_bias={100: 1.0}), "token_id(s) [100] in logit_bias contain"),
        (SamplingParams(allowed_token_ids=[3, 100]), "allowed_token_ids contains out-of-vocab"),
        (SamplingParams(bad_words=["w"]), "bad_words: the words have not been tokenized"),
        (
            SamplingParams(bad_words=["w"], _bad_words_token_ids=((3, 100),)),
            "the following tokens were specified as bad: [100]",
        ),
        (SamplingParams(truncate_prompt_tokens=65), "(65) is greater than max_model_len (64)"),
        (SamplingParams(truncate_prompt_tokens=2), "truncate it first"),
    ],
)
def test_validate_request_checks_token_ids_against_the_vocabulary(
    params: SamplingParams, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        validate_request(CONFIG, [1, 2, 3], params, has_detokenizer=True)
    assert message in str(info.value)


def test_validate_request_refuses_negative_ids_without_a_vocabulary() -> None:
    config = CoreConfig(num_kv_blocks=16, max_model_len=64, max_num_batched_tokens=256)
    ok = SamplingParams(logit_bias={10**6: 1.0})
    assert validate_request(config, [1], ok, has_detokenizer=True) is None
    with pytest.raises(ValueError, match="out-of-vocab"):
        validate_request(config, [1], SamplingParams(logit_bias={-1: 1.0}), has_detokenizer=True)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, [1, 2, 3, 4]), (2, [3, 4]), (9, [1, 2, 3, 4]), (-1, [2, 3, 4])],
)
def test_truncate_prompt_keeps_the_last_tokens(limit: int | None, expected: list[int]) -> None:
    assert truncate_prompt([1, 2, 3, 4], limit, max_model_len=3) == expected


@pytest.mark.parametrize(
    ("output", "banned"),
    [
        ([], [9]),  # only the one-token word applies at the start
        ([1], [9, 3]),
        ([5, 1], [9, 3]),
        ([1, 2], [9, 7]),
        ([2, 1, 2], [9, 7]),
        ([3], [9]),
    ],
)
def test_bad_word_bans_follow_the_generated_tail(output: list[int], banned: list[int]) -> None:
    words = [(9,), (1, 3), (1, 2, 7)]
    assert sorted(bad_word_bans(words, output)) == sorted(banned)
