"""Session fixtures of the tensor-parallel tests: a model zoo with two odd vocabularies,
and worker processes kept across engines (starting one costs an interpreter and torch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from corral.distributed.tp_executor import keep_worker_processes
from tests.model.zoo import ModelZoo

# Vocabularies of an odd size: the vocab-parallel embedding and LM head pad them.
EXTRA_SPECS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "llama-odd-vocab": lambda kw: transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **{**kw, "vocab_size": kw["vocab_size"] + 3},
    ),
    "gpt2-odd-vocab": lambda kw: transformers.GPT2Config(
        n_layer=2,
        n_embd=128,
        n_head=4,
        n_positions=1024,
        **{**kw, "vocab_size": kw["vocab_size"] + 1},
    ),
}


class TensorParallelZoo(ModelZoo):
    """The test zoo plus `EXTRA_SPECS`, built the same way."""

    def path(self, name: str) -> Path:
        if name in EXTRA_SPECS and name not in self._paths:
            tokenizer = self.tokenizer
            config = EXTRA_SPECS[name](
                {
                    "vocab_size": len(tokenizer),
                    "eos_token_id": tokenizer.eos_token_id,
                    "bos_token_id": 0,
                    "pad_token_id": tokenizer.pad_token_id,
                    "initializer_range": 0.08,
                }
            )
            torch.manual_seed(sum(map(ord, name)))
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.save_pretrained(self.root / name)
            tokenizer.save_pretrained(self.root / name)
            self._paths[name] = self.root / name
        return super().path(name)


@pytest.fixture(scope="session")
def tp_zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorParallelZoo]:
    """The tiny models, on one torch thread (as the model tests run them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TensorParallelZoo(tmp_path_factory.mktemp("tp-models"))
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _kept_workers() -> Iterator[None]:
    with keep_worker_processes():
        yield
