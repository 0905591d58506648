"""Incremental detokenization equals a full decode; prompts are validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.sampling_params import SamplingParams
from corral.tokenization import Detokenizer, encode_prompt, load_tokenizer, validate_prompt
from tests.model.zoo import CORPUS, ModelZoo


@pytest.fixture(scope="module")
def tokenizer(zoo: ModelZoo) -> Any:
    return zoo.tokenizer


def stream(detokenizer: Detokenizer, state: object, ids: list[int]) -> str:
    return "".join(detokenizer.decode_next(state, t) for t in ids)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_streamed_text_of_real_text_equals_decode_without_flush(
    tokenizer: Any, skip_special_tokens: bool
) -> None:
    detokenizer = Detokenizer(tokenizer)
    text = "".join(CORPUS)
    ids = [*tokenizer(text).input_ids, tokenizer.eos_token_id]
    state = detokenizer.new_state([], SamplingParams(skip_special_tokens=skip_special_tokens))
    streamed = stream(detokenizer, state, ids)
    assert streamed == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    assert detokenizer.flush(state) == ""


@given(data=st.data(), skip_special_tokens=st.booleans())
def test_streamed_text_plus_flush_equals_decode_for_any_ids(
    tokenizer: Any, data: st.DataObject, skip_special_tokens: bool
) -> None:
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    detokenizer = Detokenizer(tokenizer)
    state = detokenizer.new_state([5, 6], SamplingParams(skip_special_tokens=skip_special_tokens))
    text = stream(detokenizer, state, ids) + detokenizer.flush(state)
    assert text == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_multibyte_character_is_held_back_until_complete(tokenizer: Any) -> None:
    detokenizer = Detokenizer(tokenizer)
    vocab = tokenizer.get_vocab()
    # The byte-level alphabet spells the UTF-8 bytes of "😀" (F0 9F 98 80) as single tokens.
    byte_tokens = [vocab[c] for c in ("ð", "Ł", "ĺ", "Ģ")]
    state = detokenizer.new_state([], SamplingParams())
    pieces = [detokenizer.decode_next(state, t) for t in byte_tokens]
    assert pieces == ["", "", "", "😀"]


def test_forked_state_continues_independently(tokenizer: Any) -> None:
    detokenizer = Detokenizer(tokenizer)
    head = tokenizer("Größere Übungen").input_ids
    tail_a = tokenizer(" für Köche").input_ids
    tail_b = tokenizer(" 日本語").input_ids
    parent = detokenizer.new_state([], SamplingParams())
    prefix = stream(detokenizer, parent, head)
    child = detokenizer.fork_state(parent)
    assert prefix + stream(detokenizer, parent, tail_a) == tokenizer.decode(head + tail_a)
    assert prefix + stream(detokenizer, child, tail_b) == tokenizer.decode(head + tail_b)


def test_validate_prompt_accepts_ids_in_range() -> None:
    assert validate_prompt((3, 4, 5), vocab_size=6, max_model_len=3) == [3, 4, 5]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([], "empty"),
        ([1, 6], "token id 6 is outside the vocabulary"),
        ([-1], "token id -1 is outside the vocabulary"),
        ([1, 2, 3, 4], "exceed max_model_len=3"),
    ],
)
def test_validate_prompt_rejects_bad_prompts(ids: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_prompt(ids, vocab_size=6, max_model_len=3)


def test_encode_prompt_tokenizes_text(tokenizer: Any) -> None:
    ids = encode_prompt(
        tokenizer, "the quick fox", None, vocab_size=len(tokenizer), max_model_len=99
    )
    assert ids == tokenizer("the quick fox").input_ids


def test_encode_prompt_needs_exactly_one_input(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_token_ids"):
        encode_prompt(tokenizer, "a", [1], vocab_size=9, max_model_len=9)
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_token_ids"):
        encode_prompt(tokenizer, None, None, vocab_size=9, max_model_len=9)


def test_empty_text_prompt_is_rejected(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_prompt(tokenizer, "", None, vocab_size=len(tokenizer), max_model_len=9)


def test_load_tokenizer_names_the_folder_without_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        load_tokenizer(str(tmp_path))
