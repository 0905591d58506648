"""Train corral's embedded default model: a tiny Llama over a generated story world.

Everything the model learns comes from this file: a seeded grammar writes short
children's stories about a handful of animals (and chat turns that request them or
ask about them), a byte-level BPE tokenizer is trained on that text, and a small
``LlamaForCausalLM`` is trained on one CPU thread with a plain AdamW loop. The
result is written with ``save_pretrained`` into ``src/corral/default_model/``.

Usage::

    .venv/bin/python scripts/train_default_model.py            # the shipped run
    .venv/bin/python scripts/train_default_model.py --quick --out /tmp/m  # smoke run
    .venv/bin/python scripts/train_default_model.py --plot-only
    .venv/bin/python scripts/train_default_model.py --samples   # or --evaluate

The shipped run prints one JSON line per evaluation and writes the whole curve to
``train_log.json`` in ``scripts/`` and the plot to ``docs/default_model_loss.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "corral" / "default_model"
DEFAULT_LOG = REPO / "scripts" / "train_log.json"
DEFAULT_PLOT = REPO / "docs" / "default_model_loss.png"

BOS = "<|bos|>"
EOS = "<|eos|>"
SPECIAL_TOKENS = [BOS, EOS, "<|system|>", "<|user|>", "<|assistant|>", "<|pad|>"]

# Every turn ends in the eos token, so one stop token ends both a plain story and an
# assistant reply; the bos token is part of the template because chat prompts are
# tokenized without the tokenizer's own special tokens (as transformers and vLLM do).
# The template is read from the packaged model so that a retrain keeps what was added
# to it after training (the Hermes tool-calling part, which tool-free chats never reach).
CHAT_TEMPLATE = (
    Path(__file__).resolve().parents[1] / "src" / "corral" / "default_model" / "chat_template.jinja"
).read_text()

# ---------------------------------------------------------------------------------
# The world: who lives where, eats what, and what can happen to them.
# ---------------------------------------------------------------------------------

# animal: (home, food it likes, how it moves)
ANIMALS: dict[str, tuple[str, str, str]] = {
    "fox": ("den", "berries", "ran"),
    "rabbit": ("burrow", "carrots", "hopped"),
    "bear": ("cave", "honey cakes", "walked"),
    "owl": ("nest", "seeds", "flew"),
    "mouse": ("hole", "crackers", "ran"),
    "duck": ("nest", "bread crumbs", "waddled"),
    "frog": ("pond", "bugs", "hopped"),
    "squirrel": ("tree", "nuts", "ran"),
    "hedgehog": ("log", "apples", "walked"),
    "turtle": ("shell", "leaves", "walked"),
    "pig": ("barn", "pears", "trotted"),
    "goat": ("barn", "turnips", "trotted"),
}
# The cast is fixed: each animal is always the same character, so a name, its
# species, its home and its pronoun always agree, in every story and answer.
NAMES: dict[str, str] = {
    "fox": "Pip",
    "rabbit": "Lily",
    "bear": "Ben",
    "owl": "Ruby",
    "mouse": "Max",
    "duck": "Daisy",
    "frog": "Finn",
    "squirrel": "Sue",
    "hedgehog": "Tom",
    "turtle": "Mia",
    "pig": "Sam",
    "goat": "Rosa",
}
GIRLS = {"Lily", "Ruby", "Daisy", "Sue", "Mia", "Rosa"}
# Best friends come in fixed pairs too: the friend who helps the hero is always the
# same one, which keeps even greedy decoding from inventing a second hero.
_PAIRS = [
    ("fox", "duck"),
    ("rabbit", "hedgehog"),
    ("bear", "owl"),
    ("mouse", "squirrel"),
    ("frog", "turtle"),
    ("pig", "goat"),
]
FRIENDS: dict[str, str] = {a: b for pair in _PAIRS for a, b in (pair, pair[::-1])}
ADJECTIVES = ["little", "small", "brave", "kind", "shy", "happy", "curious", "sleepy", "clever"]
PLACES = [
    "a green forest",
    "a big meadow",
    "a quiet valley",
    "a sunny garden",
    "a small village",
    "a farm near the hills",
]
ACTIVITIES = [
    "play in the leaves",
    "look at the stars",
    "sing songs",
    "pick flowers",
    "run in the grass",
    "climb trees",
    "watch the clouds",
    "jump in puddles",
    "swim in the river",
    "dig in the dirt",
]
COLORS = ["red", "blue", "green", "yellow", "orange", "purple"]
ITEMS = ["ball", "hat", "kite", "scarf", "book", "drum", "cup", "bell"]
HIDING_SPOTS = [
    "under a big rock",
    "behind a tall tree",
    "in a pile of leaves",
    "next to the old well",
    "under a bush",
    "by the little bridge",
]
SEARCH_SPOTS = [
    "in the garden",
    "by the river",
    "near the old mill",
    "in the tall grass",
    "on the hill",
]
# fear: (how it starts, what the friend does, what the hero says at the end)
FEARS: dict[str, tuple[str, str, str]] = {
    "the dark": (
        "Every night, when the sun went down, {N} hid under {his} blanket.",
        "{F} took {N} outside and showed {him} the bright moon and the many stars.",
        "The night is not so scary. It is full of little lights!",
    ),
    "thunder": (
        "When a storm came, {N} shook and cried at every loud sound.",
        "{F} sat with {N} and they sang a song together until the storm was over.",
        "Thunder is loud, but it cannot hurt me!",
    ),
    "deep water": (
        "{N} never went near the river, because the water looked so deep.",
        "{F} showed {N} how to swim slowly near the shore, one little step at a time.",
        "The water is not so scary when I go slowly!",
    ),
}
# number found -> number given away: the sharing plot keeps its arithmetic right.
NUMBERS = {"two": "one", "four": "two", "six": "three", "eight": "four", "ten": "five"}
LANDMARKS = ["the old oak tree", "the big rock", "the little bridge", "the river", "the red barn"]
# destination: what they see there
DESTINATIONS: dict[str, str] = {
    "the sea": "the blue waves and the white birds",
    "the top of the hill": "the whole valley far below them",
    "the old castle": "tall towers and a big wooden door",
    "the waterfall": "a rainbow in the falling water",
    "the flower field": "more flowers than they could count",
}
# thing: (what it is made of, how it turns out)
THINGS: dict[str, tuple[str, str]] = {
    "kite": ("paper and sticks", "It flew high up in the sky"),
    "house": ("sticks and mud", "It was warm and dry inside"),
    "boat": ("wood and leaves", "It floated on the pond"),
    "swing": ("rope and a board", "It swung high and low"),
}
SYSTEM_PROMPTS = [
    "You are a friendly storyteller.",
    "You tell short stories about animals.",
    "You are a helpful assistant for children.",
]


def _pronouns(name: str) -> dict[str, str]:
    girl = name in GIRLS
    return {
        "he": "she" if girl else "he",
        "He": "She" if girl else "He",
        "his": "her" if girl else "his",
        "His": "Her" if girl else "His",
        "him": "her" if girl else "him",
    }


def _fill(text: str, slots: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)], text)


class Story:
    """One drawn story: its text and the facts a question about it can ask.

    Attributes:
        text: The story, one paragraph ending in "The end."
        animal: The hero's species.
        plot: One of "lost", "fear", "share", "trip", "build".
        qa: (question, answer) pairs that the story answers.
    """

    def __init__(self, text: str, animal: str, plot: str, qa: list[tuple[str, str]]) -> None:
        self.text = text
        self.animal = animal
        self.plot = plot
        self.qa = qa


PLOTS = ["lost", "fear", "share", "trip", "build"]


def make_story(rng: random.Random, animal: str | None = None, plot: str | None = None) -> Story:
    """Draw one story from the grammar.

    Args:
        rng: The source of every choice, so a seed fixes the story.
        animal: The hero's species, or None to draw one.
        plot: One of ``PLOTS``, or None to draw one.

    Returns:
        The story with its question/answer facts.
    """
    animal = animal or rng.choice(sorted(ANIMALS))
    plot = plot or rng.choice(PLOTS)
    name = NAMES[animal]
    friend_animal = FRIENDS[animal]
    friend = NAMES[friend_animal]
    home, food, move = ANIMALS[animal]
    s = {
        "N": name,
        "F": friend,
        "A": animal,
        "FA": friend_animal,
        "adj": rng.choice(ADJECTIVES),
        "place": rng.choice(PLACES),
        "home": home,
        "food": food,
        "move": move,
        # A hero afraid of deep water does not swim in the river every day.
        "act": rng.choice([a for a in ACTIVITIES if plot != "fear" or "swim" not in a]),
        **_pronouns(name),
    }
    opening = rng.choice(
        [
            "Once upon a time, there was a {adj} {A} named {N}. {N} lived in a {home} in {place}.",
            "Once upon a time, in {place}, there lived a {adj} {A} named {N}. "
            "{His} home was a cozy {home}.",
        ]
    )
    likes = rng.choice(["Every day, {N} liked to {act}.", "{N} loved to {act} with {his} family."])
    qa = [
        ("Who is the story about?", "The story is about {N}, a {adj} {A}."),
        ("Where did {N} live?", "{N} lived in a {home} in {place}."),
    ]
    middle: list[str]
    if plot == "lost":
        s["color"], s["item"] = rng.choice(COLORS), rng.choice(ITEMS)
        s["spot"], s["search"] = rng.choice(HIDING_SPOTS), rng.choice(SEARCH_SPOTS)
        middle = [
            "{N} had a {color} {item} that {he} loved very much.",
            rng.choice(
                [
                    "One morning, {N} could not find {his} {item}.",
                    "One day, the {color} {item} was gone.",
                ]
            ),
            "{He} looked in the {home} and all around it, but the {item} was not there.",
            "{N} sat down and felt very sad.",
            "Then {his} best friend, {F} the {FA}, came by.",
            '"Why are you sad?" asked {F}.',
            '"I lost my {color} {item}," said {N}.',
            '"Do not worry. I will help you," said {F}.',
            "Together they looked {search}.",
            "At last, {F} found the {color} {item} {spot}.",
            '{N} was so happy. "Thank you, {F}!" said {N}.',
            "{N} and {F} played with the {item} until the sun went down.",
        ]
        qa += [
            ("What did {N} lose?", "{N} lost {his} {color} {item}."),
            ("Who helped {N}?", "{F} the {FA} helped {N}."),
            ("Where was the {item}?", "The {item} was {spot}."),
        ]
    elif plot == "fear":
        s["fear"] = rng.choice(sorted(FEARS))
        start, help_, lesson = FEARS[s["fear"]]
        middle = [
            "But {N} had a secret. {He} was afraid of {fear}.",
            start,
            "One day, {N} told {his} friend {F} the {FA} about it.",
            '"I can help you," said {F}.',
            help_,
            "{N} took a deep breath and felt brave.",
            '"' + lesson + '" said {N}.',
            "After that, {N} was never afraid of {fear} again.",
        ]
        qa += [
            ("What was {N} afraid of?", "{N} was afraid of {fear}."),
            ("Who helped {N}?", "{F} the {FA} helped {N} to be brave."),
        ]
    elif plot == "share":
        s["many"] = rng.choice(sorted(NUMBERS))
        s["half"] = NUMBERS[s["many"]]
        s["landmark"] = rng.choice(LANDMARKS)
        middle = [
            "{N} liked to eat {food} more than anything.",
            "One day, {N} found {many} {food} near {landmark}.",
            "{He} was about to eat them all when {he} saw {F} the {FA}.",
            "{F} looked very hungry.",
            "{N} thought for a moment. Then {he} gave {F} {half} of the {food}.",
            '"Thank you, {N}! You are very kind," said {F}.',
            "They sat together near {landmark} and ate {half} {food} each.",
            "Sharing made the {food} taste even better.",
        ]
        qa += [
            ("What did {N} find?", "{N} found {many} {food}."),
            ("How many {food} did {N} give to {F}?", "{N} gave {half} {food} to {F}."),
            ("Who did {N} share with?", "{N} shared with {F} the {FA}."),
        ]
    elif plot == "trip":
        s["dest"] = rng.choice(sorted(DESTINATIONS))
        s["sight"] = DESTINATIONS[s["dest"]]
        s["lm1"], s["lm2"] = rng.sample(LANDMARKS, 2)
        middle = [
            "One day, {N} wanted to see {dest}.",
            "{He} packed some {food} in a small bag and set off.",
            "{N} {move} past {lm1} and over {lm2}.",
            "On the way, {he} met {F} the {FA}, and they went on together.",
            "When they reached {dest}, they saw {sight}.",
            '"It is so beautiful!" said {F}.',
            "They shared the {food} and watched until the sun went down.",
            "Then {N} and {F} went home. That night, {N} dreamed about {dest}.",
        ]
        qa += [
            ("Where did {N} go?", "{N} went to {dest}."),
            ("What did they see?", "They saw {sight}."),
            ("Who went with {N}?", "{F} the {FA} went with {N}."),
        ]
    elif plot == "build":
        s["thing"] = rng.choice(sorted(THINGS))
        s["stuff"], s["result"] = THINGS[s["thing"]]
        middle = [
            "One day, {N} wanted to make a {thing}.",
            "{He} found some {stuff} and began to work.",
            "But the {thing} fell apart, and {N} felt sad.",
            "{N} did not give up. {He} asked {F} the {FA} for help.",
            "{F} held the {stuff} while {N} tied them together.",
            "This time the {thing} was strong. {result}!",
            '"We did it!" said {N} and {F}.',
            "{N} learned that friends can do hard things together.",
        ]
        qa += [
            ("What did {N} make?", "{N} made a {thing} out of {stuff}."),
            ("Who helped {N}?", "{F} the {FA} helped {N} make the {thing}."),
        ]
    else:
        raise ValueError(f"plot: {plot!r} is not one of {PLOTS}")
    sentences = [opening, likes, *middle, "The end."]
    text = " ".join(_fill(x, s) for x in sentences)
    return Story(text, animal, plot, [(_fill(q, s), _fill(a, s)) for q, a in qa])


_PLOT_REQUESTS = {
    "lost": "who lost something",
    "fear": "who was afraid",
    "share": "who shared food",
    "trip": "who went on a trip",
    "build": "who made something",
}
SMALL_TALK = [
    ("Hello!", "Hello! I am a little story model. Ask me for a story about an animal."),
    ("Hi!", "Hi! Would you like to hear a story?"),
    ("Who are you?", "I am a tiny model that knows stories about animals and their friends."),
    (
        "What can you do?",
        "I can tell you short stories about animals, and answer questions about them.",
    ),
    ("Thank you!", "You are welcome! I hope you liked the story."),
    ("Good night!", "Good night! Sleep well and have sweet dreams."),
]
ANIMAL_FACTS = [
    ("Where does a {A} live?", "A {A} lives in a {home}."),
    ("What does a {A} like to eat?", "A {A} likes to eat {food}."),
    ("How does a {A} move?", "A {A} {move} from place to place."),
    ("Who is {N}?", "{N} is a {A} who lives in a {home}."),
    ("Who is the {A}?", "The {A} is called {N}."),
    ("Who is {N}'s best friend?", "{N}'s best friend is {F} the {FA}."),
]


def make_chat(rng: random.Random) -> list[dict[str, str]]:
    """Draw one conversation in the chat template's message format.

    Args:
        rng: The source of every choice.

    Returns:
        Messages with "role" and "content", ending in an assistant turn.
    """
    messages: list[dict[str, str]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    kind = rng.random()
    if kind < 0.15:
        q, a = rng.choice(SMALL_TALK[:4])
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        kind = 0.2  # a greeting is followed by a story request
    if kind < 0.55:
        animal = rng.choice(sorted(ANIMALS))
        plot = rng.choice(PLOTS)
        story = make_story(rng, animal=animal, plot=plot)
        article = "an" if animal[0] in "aeiou" else "a"
        request = rng.choice(
            [
                f"Tell me a story about {article} {animal}.",
                f"Can you tell me a story about {article} {animal}?",
                f"Tell me a story about {article} {animal} {_PLOT_REQUESTS[plot]}.",
                f"Tell me a story about {article} {animal} {_PLOT_REQUESTS[plot]}.",
                "Please tell me a story.",
            ]
        )
        messages += [
            {"role": "user", "content": request},
            {"role": "assistant", "content": story.text},
        ]
        if rng.random() < 0.4:
            q, a = rng.choice(story.qa)
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rng.random() < 0.2:
            q, a = SMALL_TALK[4]
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    elif kind < 0.85:
        story = make_story(rng)
        first, *rest = rng.sample(story.qa, min(len(story.qa), rng.choice([1, 2])))
        messages += [
            {"role": "user", "content": story.text + "\n" + first[0]},
            {"role": "assistant", "content": first[1]},
        ]
        for q, a in rest:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    else:
        animal = rng.choice(sorted(ANIMALS))
        home, food, move = ANIMALS[animal]
        slots = {"A": animal, "N": NAMES[animal], "FA": FRIENDS[animal]}
        slots |= {"F": NAMES[FRIENDS[animal]], "home": home, "food": food, "move": move}
        for q, a in rng.sample(ANIMAL_FACTS, rng.choice([1, 2])):
            messages += [
                {"role": "user", "content": _fill(q, slots)},
                {"role": "assistant", "content": _fill(a, slots)},
            ]
    return messages


@functools.cache
def _chat_template() -> Any:
    import jinja2

    return jinja2.Environment().from_string(CHAT_TEMPLATE)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages with ``CHAT_TEMPLATE`` exactly as transformers would.

    Args:
        messages: Dicts with "role" and "content".
        add_generation_prompt: End with the assistant marker, as a prompt does.

    Returns:
        The conversation as text, special tokens written out.
    """
    return _chat_template().render(
        messages=messages,
        bos_token=BOS,
        eos_token=EOS,
        add_generation_prompt=add_generation_prompt,
    )


def make_document(rng: random.Random) -> str:
    """Draw one training document: a plain story (60%) or a conversation (40%).

    Args:
        rng: The source of every choice.

    Returns:
        The document with its bos and eos tokens written out.
    """
    if rng.random() < 0.6:
        return BOS + make_story(rng).text + EOS
    return render_chat(make_chat(rng))


def make_corpus(num_documents: int, seed: int) -> list[str]:
    """Draw ``num_documents`` documents from a generator seeded with ``seed``.

    Args:
        num_documents: How many documents.
        seed: Seed of the grammar's random choices.

    Returns:
        The documents in drawing order.
    """
    rng = random.Random(seed)
    return [make_document(rng) for _ in range(num_documents)]


_WORD = re.compile(r"[A-Za-z]+")


def vocabulary() -> frozenset[str]:
    """Every word the grammar writes, lower-cased.

    Template words are collected from a few thousand drawn documents (every
    template variant is drawn with a probability of a few percent at least, so
    all appear); table words (names, animals, places...) are added from the tables
    themselves so that rare combinations cannot be missed. A model that stays
    inside this set speaks only its world's language.

    Returns:
        The set of words, lower-cased.
    """
    tables: list[Any] = [ANIMALS, NAMES, FRIENDS, ADJECTIVES, PLACES, ACTIVITIES, COLORS, ITEMS]
    tables += [HIDING_SPOTS, SEARCH_SPOTS, FEARS, NUMBERS, LANDMARKS, DESTINATIONS, THINGS]
    tables += [SYSTEM_PROMPTS, SMALL_TALK, ANIMAL_FACTS, _PLOT_REQUESTS]
    text = json.dumps(tables, default=list) + " ".join(make_corpus(5000, seed=12345))
    text = re.sub(r"<\|\w+\|>|\{\w+\}", " ", text)
    return frozenset(w.lower() for w in _WORD.findall(text))


# ---------------------------------------------------------------------------------
# Tokenizer, model, training.
# ---------------------------------------------------------------------------------


def train_tokenizer(documents: list[str], vocab_size: int) -> Any:
    """Train a byte-level BPE on ``documents`` and wrap it for transformers.

    Args:
        documents: Training text, special tokens written out.
        vocab_size: Target vocabulary size (the merges stop early when the corpus
            has no more pairs to merge).

    Returns:
        A ``PreTrainedTokenizerFast`` that adds the bos token to plain text and
        carries the chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: Any, seed: int) -> Any:
    """A fresh Llama sized to train in minutes on one CPU thread.

    Args:
        tokenizer: Gives the vocabulary size and special token ids.
        seed: Seed of the weight initialisation.

    Returns:
        A ``LlamaForCausalLM`` in float32.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _windows(stream: list[int], starts: list[int], seq_len: int) -> list[int]:
    """Offsets of windows that each begin at a document start and fit in ``stream``."""
    return [s for s in starts if s + seq_len + 1 <= len(stream)]


def _encode(tokenizer: Any, documents: list[str]) -> tuple[list[int], list[int]]:
    stream: list[int] = []
    starts: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        starts.append(len(stream))
        stream.extend(ids)
    return stream, starts


def _make_tokenizer_config_portable(path: Path) -> None:
    """Let transformers 4.x load the tokenizer that transformers 5 saved.

    transformers 5 names its fast tokenizer class ``TokenizersBackend`` and keeps the
    chat template only in ``chat_template.jinja``; 4.x knows the class as
    ``PreTrainedTokenizerFast`` and reads the template from this file.
    """
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2) + "\n")


def train(args: argparse.Namespace, log: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Generate the corpus, train tokenizer and model, save them to ``args.out``.

    Args:
        args: The parsed command line.
        log: Called with each evaluation record.

    Returns:
        The run record: settings, curve and final numbers.
    """
    import torch

    torch.set_num_threads(1)
    random.seed(args.seed)
    t0 = time.perf_counter()
    train_docs = make_corpus(args.documents, seed=args.seed)
    eval_docs = make_corpus(args.eval_documents, seed=args.seed + 1)
    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    model = build_model(tokenizer, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    stream, starts = _encode(tokenizer, train_docs)
    eval_stream, eval_starts = _encode(tokenizer, eval_docs)
    data = torch.tensor(stream, dtype=torch.long)
    eval_data = torch.tensor(eval_stream, dtype=torch.long)
    train_windows = _windows(stream, starts, args.seq_len)
    eval_windows = _windows(eval_stream, eval_starts, args.seq_len)[
        : args.eval_batches * args.batch
    ]
    setup_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "params": n_params,
                "vocab": len(tokenizer),
                "train_tokens": len(stream),
                "eval_tokens": len(eval_stream),
                "setup_s": round(setup_s, 1),
            }
        ),
        flush=True,
    )

    def batch_of(source: torch.Tensor, offsets: list[int]) -> torch.Tensor:
        idx = torch.tensor(offsets)[:, None] + torch.arange(args.seq_len + 1)[None, :]
        return source[idx]

    def loss_of(chunk: torch.Tensor) -> torch.Tensor:
        # bfloat16 matmuls run about three times float32's on this CPU; the master
        # weights, optimizer state and loss stay float32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=chunk[:, :-1]).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1)
        )

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        losses = [
            loss_of(batch_of(eval_data, eval_windows[i : i + args.batch])).item()
            for i in range(0, len(eval_windows), args.batch)
        ]
        model.train()
        return sum(losses) / len(losses)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    order = random.Random(args.seed + 2)
    curve: list[dict[str, Any]] = []
    train_losses: list[float] = []
    model.train()
    t_train = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        chunk = batch_of(data, order.choices(train_windows, k=args.batch))
        loss = loss_of(chunk)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_losses.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - t_train
            record = {
                "step": step + 1,
                "train_loss": sum(train_losses) / len(train_losses),
                "eval_loss": evaluate(),
                "lr": lr_at(step),
                "elapsed_s": round(elapsed, 1),
                "tokens_per_s": round((step + 1) * args.batch * args.seq_len / elapsed),
            }
            train_losses.clear()
            curve.append(record)
            log(record)
    train_s = time.perf_counter() - t_train

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    _make_tokenizer_config_portable(args.out / "tokenizer_config.json")
    return {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out", "log", "plot")
        },
        "params": n_params,
        "vocab": len(tokenizer),
        "train_tokens": len(stream),
        "setup_s": round(setup_s, 1),
        "train_s": round(train_s, 1),
        "curve": curve,
        "torch": torch.__version__,
    }


def plot(record: dict[str, Any], path: Path) -> None:
    """Draw the train and held-out loss curves to ``path``.

    Args:
        record: The run record written by ``train``.
        path: Where the PNG goes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in record["curve"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(steps, [r["train_loss"] for r in record["curve"]], label="train (mean since last eval)")
    ax.plot(steps, [r["eval_loss"] for r in record["curve"]], label="held-out eval")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_yscale("log")
    ax.set_title(
        f"corral default model: {record['params'] / 1e6:.2f}M params, "
        f"{record['train_s'] / 60:.1f} min on 1 CPU thread"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def show_samples(folder: Path, seed: int) -> None:
    """Print greedy and sampled generations of the model in ``folder``.

    Args:
        folder: A saved checkpoint.
        seed: Seed of the sampled generations.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = {
        "plain": tokenizer("Once upon a time", return_tensors="pt"),
        "chat": tokenizer.apply_chat_template(
            [{"role": "user", "content": "Tell me a story about a frog who was afraid."}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ),
    }
    for name, inputs in prompts.items():
        settings = [("greedy", {"do_sample": False})]
        settings += [("sampled", {"do_sample": True, "temperature": 0.8, "top_p": 0.95})] * 2
        torch.manual_seed(seed)
        for label, kwargs in settings:
            out = model.generate(**inputs, max_new_tokens=300, **kwargs)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
            print(f"--- {name}, {label}:\n{text}\n", flush=True)


def evaluate_behaviour(folder: Path) -> dict[str, list[int]]:
    """Score greedy answers of the model in ``folder`` on what its world asks of it.

    Args:
        folder: A saved checkpoint.

    Returns:
        For each check, [right, asked]: hero of a requested story, plot of a
        requested story, exact answers about a story in the prompt (fresh stories,
        seed 2024), exact answers to world questions.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def reply(content: str, max_new_tokens: int) -> str:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    # A phrase that only the requested plot's stories contain.
    plot_marks = {
        "lost": "could not find|was gone",
        "fear": "afraid of",
        "share": "more than anything",
        "trip": "wanted to see",
        "build": "wanted to make",
    }
    scores = {"hero": [0, 0], "plot": [0, 0], "story_qa": [0, 0], "world_qa": [0, 0]}
    for animal in sorted(ANIMALS):
        article = "an" if animal[0] in "aeiou" else "a"
        text = reply(f"Tell me a story about {article} {animal}.", 320)
        scores["hero"][0] += bool(re.search(rf"\b{animal} named {NAMES[animal]}\b", text))
        scores["hero"][1] += 1
    for plot_ in PLOTS:
        for animal in ["fox", "bear", "mouse"]:
            text = reply(f"Tell me a story about a {animal} {_PLOT_REQUESTS[plot_]}.", 320)
            scores["plot"][0] += bool(re.search(plot_marks[plot_], text))
            scores["plot"][1] += 1
    rng = random.Random(2024)
    for _ in range(30):
        story = make_story(rng)
        question, answer = rng.choice(story.qa)
        scores["story_qa"][0] += reply(story.text + "\n" + question, 40).strip() == answer
        scores["story_qa"][1] += 1
    for animal in sorted(ANIMALS):
        home, food, move = ANIMALS[animal]
        slots = {"A": animal, "N": NAMES[animal], "FA": FRIENDS[animal]}
        slots |= {"F": NAMES[FRIENDS[animal]], "home": home, "food": food, "move": move}
        for question, answer in ANIMAL_FACTS:
            text = reply(_fill(question, slots), 40).strip()
            scores["world_qa"][0] += text == _fill(answer, slots)
            scores["world_qa"][1] += 1
    return scores


def main() -> None:
    """Parse the command line and run training, or redraw the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--documents", type=int, default=12000)
    parser.add_argument("--eval-documents", type=int, default=600)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run to check the pipeline end to end"
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --log")
    parser.add_argument(
        "--samples", action="store_true", help="print generations of the model in --out"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="score greedy answers of the model in --out"
    )
    args = parser.parse_args()
    if args.evaluate:
        print(json.dumps(evaluate_behaviour(args.out)), flush=True)
        return
    if args.samples:
        show_samples(args.out, args.seed)
        return
    if args.plot_only:
        plot(json.loads(args.log.read_text()), args.plot)
        return
    if args.quick:
        args.documents, args.eval_documents, args.steps = 500, 64, 20
        args.eval_every, args.eval_batches, args.warmup = 10, 1, 5
    record = train(args, log=lambda r: print(json.dumps(r), flush=True))
    args.log.write_text(json.dumps(record, indent=1) + "\n")
    if not args.quick:
        plot(record, args.plot)
    print(json.dumps({"train_s": record["train_s"], "final": record["curve"][-1]}), flush=True)


if __name__ == "__main__":
    main()
