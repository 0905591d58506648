"""The chat template: rendered by transformers exactly as the training corpus wrote chats."""

import random

MESSAGES = [
    {"role": "system", "content": "You are a friendly storyteller."},
    {"role": "user", "content": "Tell me a story about a fox."},
]


def test_generation_prompt_ends_with_the_assistant_marker(tokenizer) -> None:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>You are a friendly storyteller.<|eos|>"
        "<|user|>Tell me a story about a fox.<|eos|><|assistant|>"
    )


def test_template_renders_as_the_training_corpus_did(tokenizer, script) -> None:
    rng = random.Random(7)
    for _ in range(20):
        messages = script.make_chat(rng)
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        assert rendered == script.render_chat(messages)


def test_tokenized_chat_has_exactly_one_bos(tokenizer) -> None:
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids[0] == tokenizer.bos_token_id
