"""Session fixtures of the structured-output tests: a tiny random-weight Llama whose
tokenizer was trained on JSON-flavoured text, served through the real `LLM`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).parent.parent / "model"))
from corral.llm import LLM
from tests.model.zoo import CORPUS, EOS, MODEL_SPECS

# JSON punctuation in the training text gives the tokenizer tokens that close strings
# and objects (`",`, `"}` ...), as real tokenizers have; with only the bare `"` byte a
# random model would rarely end a string.
JSON_CORPUS = [
    '{"name": "fox", "age": 3, "tags": ["quick", "brown"], "ok": true}',
    '[{"id": 1, "value": -2.5e3}, {"id": 2, "value": null}]',
    '{"a": {"b": [1, 2, 3]}, "c": "d", "e": false}',
]


def _tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<s>", EOS, "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator((CORPUS + JSON_CORPUS * 3) * 20, trainer)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token=EOS, pad_token="<pad>"
    )
    hf_tokenizer.save_pretrained(folder)
    return hf_tokenizer


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a 2-layer random-weight Llama (float32) with its tokenizer."""
    folder = tmp_path_factory.mktemp("structured_model")
    tokenizer = _tokenizer(folder)
    config = MODEL_SPECS["llama"](
        {
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": 0,
            "pad_token_id": tokenizer.pad_token_id,
            "initializer_range": 0.08,
        }
    )
    torch.manual_seed(17)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llm(model_path: Path) -> Iterator[LLM]:
    """One engine for the whole session (batches many requests at once)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LLM(
        str(model_path), dtype="float32", num_kv_blocks=512, max_model_len=1024, max_num_seqs=64
    )
    torch.set_num_threads(threads)
