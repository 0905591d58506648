"""The training script's corpus: seeded, and written only in its small world's words."""

import random
import re


def test_corpus_is_reproducible_from_its_seed(script) -> None:
    assert script.make_corpus(50, seed=3) == script.make_corpus(50, seed=3)
    assert script.make_corpus(50, seed=3) != script.make_corpus(50, seed=4)


def test_every_story_starts_and_ends_the_same_way(script) -> None:
    rng = random.Random(0)
    for _ in range(200):
        text = script.make_story(rng).text
        assert text.startswith("Once upon a time")
        assert text.endswith("The end.")


def test_sharing_stories_halve_what_was_found(script) -> None:
    rng = random.Random(1)
    for _ in range(50):
        story = script.make_story(rng, plot="share")
        many, half = re.search(r"found (\w+) .*? gave \w+ (\w+) of", story.text).groups()
        assert script.NUMBERS[many] == half


def test_vocabulary_covers_freshly_drawn_documents(script, vocabulary) -> None:
    for document in script.make_corpus(300, seed=99):
        words = re.findall(r"[A-Za-z]+", re.sub(r"<\|\w+\|>", " ", document))
        assert {w.lower() for w in words} <= vocabulary
