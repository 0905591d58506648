"""The shipped checkpoint folder: complete, small, packaged, loadable by transformers."""

import tomllib
from fnmatch import fnmatch
from pathlib import Path

from corral.default_model import DEFAULT_MODEL_PATH, default_model_path

REPO = Path(__file__).resolve().parents[2]


def test_folder_holds_a_complete_checkpoint() -> None:
    names = {p.name for p in DEFAULT_MODEL_PATH.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert default_model_path() == str(DEFAULT_MODEL_PATH)


def test_weights_are_at_most_20_mb() -> None:
    assert (DEFAULT_MODEL_PATH / "model.safetensors").stat().st_size <= 20 * 1024 * 1024


def test_every_checkpoint_file_is_package_data() -> None:
    # An editable install finds the files in place; a wheel carries only what
    # package-data names, so every file of the folder must match a pattern.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["corral.default_model"]
    for path in DEFAULT_MODEL_PATH.iterdir():
        if path.is_file() and path.suffix != ".py":
            assert any(fnmatch(path.name, pattern) for pattern in patterns), path.name


def test_config_is_a_small_llama() -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(DEFAULT_MODEL_PATH)
    assert config.model_type == "llama"
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.tie_word_embeddings


def test_model_has_a_few_million_parameters(model) -> None:
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000


def test_tokenizer_matches_the_model(tokenizer, model) -> None:
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.bos_token_id == model.config.bos_token_id


def test_plain_text_is_encoded_after_a_bos_token(tokenizer) -> None:
    ids = tokenizer("Once upon a time").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Once upon a time"
