"""What the shipped model writes, checked with transformers' own generate().

The greedy paths pass near-ties (where the grammar drew uniformly among adjectives
or places, the top two logits can differ by a few hundredths), so another CPU may
take another branch there. The assertions are properties that every path through
the grammar has, so they do not depend on which branch is taken.
"""

import re
from typing import Any

import pytest
import torch

WORD = re.compile(r"[A-Za-z]+")


def _greedy(model: Any, inputs: Any, max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def story(model, tokenizer) -> list[int]:
    """Greedy continuation of "Once upon a time"."""
    # A story is 150 to 200 tokens: 320 leaves room to see whether it ends.
    return _greedy(model, tokenizer("Once upon a time", return_tensors="pt"), 320)


@pytest.fixture(scope="module")
def fox_reply(model, tokenizer) -> list[int]:
    """The first sentences of the greedy reply to a chat request for a fox story."""
    messages = [{"role": "user", "content": "Tell me a story about a fox."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return _greedy(model, inputs, 40)


def test_greedy_story_uses_only_the_worlds_words(story, tokenizer, vocabulary) -> None:
    words = {w.lower() for w in WORD.findall(tokenizer.decode(story, skip_special_tokens=True))}
    assert len(words) > 20
    assert words <= vocabulary


def test_greedy_story_ends_with_the_end_and_eos(story, tokenizer) -> None:
    assert story[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(story[:-1]).endswith("The end.")


def test_greedy_story_keeps_its_hero(story, tokenizer, script) -> None:
    text = tokenizer.decode(story, skip_special_tokens=True)
    animal, name = re.search(r"(\w+) named (\w+)\.", text).groups()
    assert script.NAMES[animal] == name
    assert text.count(name) >= 4


def test_chat_story_is_about_the_requested_animal(fox_reply, tokenizer, vocabulary) -> None:
    text = tokenizer.decode(fox_reply, skip_special_tokens=True)
    assert text.startswith("Once upon a time")
    assert re.search(r"\bfox named Pip\b", text)
    assert {w.lower() for w in WORD.findall(text)} <= vocabulary


def test_greedy_story_names_every_animal_by_its_cast_name(story, tokenizer, script) -> None:
    text = tokenizer.decode(story, skip_special_tokens=True)
    pairs = re.findall(r"(\w+) the (\w+)", text) + [
        (name, animal) for animal, name in re.findall(r"(\w+) named (\w+)", text)
    ]
    pairs = [(name, animal) for name, animal in pairs if animal in script.NAMES]
    assert len(pairs) >= 2
    assert all(script.NAMES[animal] == name for name, animal in pairs)
