"""Tiny random-weight models of every supported architecture, saved and loaded for real.

Each model is built from a transformers config with a fixed seed, saved with
``save_pretrained`` next to a byte-level BPE tokenizer trained here, and loaded by
corral through its ordinary loading path. Everything is session-scoped and lazy:
a test pays only for the models it uses, once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corral.llm import LLM

CORPUS = [
    "The quick brown fox jumps over the lazy dog. ",
    "Structured concurrency keeps every task inside a nursery. ",
    "Größere Übungen für Köche: ünïcödé çàfé. ",
    "日本語のテキストと絵文字 😀🚀 も含まれます。",
    "Ελληνικά κείμενα και русский текст тоже. ",
    "def add(a, b):\n    return a + b\n",
]
EOS = "</s>"


def train_tokenizer(folder: Path, vocab_size: int = 384) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small multilingual corpus, saved in ``folder``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", EOS, "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token=EOS, pad_token="<pad>"
    )
    hf_tokenizer.save_pretrained(folder)
    return hf_tokenizer


def _common(vocab_size: int, eos: int, pad: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "eos_token_id": eos,
        "bos_token_id": 0,
        "pad_token_id": pad,
        "initializer_range": 0.08,
    }


def _llama(kw: dict[str, Any], **extra: Any) -> Any:
    return transformers.LlamaConfig(
        num_hidden_layers=2, max_position_embeddings=1024, **{**kw, **extra}
    )


MODEL_SPECS: dict[str, Callable[[dict[str, Any]], Any]] = {
    # head size 64, GQA 4:2, untied
    "llama": lambda kw: _llama(
        kw, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2
    ),
    # head size 128, MQA, tied embeddings, Llama 3 rope scaling
    "llama3-rope": lambda kw: _llama(
        kw,
        hidden_size=256,
        intermediate_size=384,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    # head size 80, sliding window shorter than the long prompts
    "mistral": lambda kw: transformers.MistralConfig(
        num_hidden_layers=2,
        hidden_size=160,
        intermediate_size=320,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=80,
        sliding_window=48,
        max_position_embeddings=1024,
        **kw,
    ),
    # q/k/v biases, head size 64, tied
    "qwen2": lambda kw: transformers.Qwen2Config(
        num_hidden_layers=2,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        **kw,
    ),
    # q/k norm, head size 128 wider than hidden / heads, GQA 4:2
    "qwen3": lambda kw: transformers.Qwen3Config(
        num_hidden_layers=2,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=1024,
        **kw,
    ),
    # head size 80, full multi-head attention, untied
    "llama-mha": lambda kw: _llama(
        kw, hidden_size=160, intermediate_size=256, num_attention_heads=2, num_key_value_heads=2
    ),
    # head size 64, GQA 4:1, window on all layers
    "mistral-gqa": lambda kw: transformers.MistralConfig(
        num_hidden_layers=2,
        hidden_size=256,
        intermediate_size=384,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        sliding_window=100,
        max_position_embeddings=1024,
        **kw,
    ),
    # sliding window on the layers past max_window_layers only, untied
    "qwen2-window": lambda kw: transformers.Qwen2Config(
        num_hidden_layers=3,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=40,
        max_window_layers=1,
        max_position_embeddings=1024,
        **kw,
    ),
    # q/k norm with q/k/v/o biases, head size 64, tied
    "qwen3-bias": lambda kw: transformers.Qwen3Config(
        num_hidden_layers=2,
        hidden_size=256,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        attention_bias=True,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        **kw,
    ),
    # head size 80
    "gpt2-h80": lambda kw: transformers.GPT2Config(
        n_layer=2, n_embd=160, n_head=2, n_positions=1024, **kw
    ),
    # learned positions, Conv1D weights, head size 64
    "gpt2": lambda kw: transformers.GPT2Config(
        n_layer=2, n_embd=128, n_head=2, n_positions=1024, **kw
    ),
}


class ModelZoo:
    """Builds, saves and caches the tiny models (and their transformers twins)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokenizer = train_tokenizer(root / "tokenizer")
        self._paths: dict[str, Path] = {}
        self._hf: dict[str, Any] = {}
        self._llms: dict[tuple[str, tuple[tuple[str, Any], ...]], LLM] = {}

    def path(self, name: str) -> Path:
        """Folder of model ``name`` (config, safetensors weights, tokenizer)."""
        if name not in self._paths:
            folder = self.root / name
            tokenizer = self.tokenizer
            config = MODEL_SPECS[name](
                _common(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
            )
            torch.manual_seed(sum(map(ord, name)))
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            self._paths[name] = folder
        return self._paths[name]

    def hf_model(self, name: str) -> Any:
        """The transformers model loaded from the same folder, float32, eval mode."""
        if name not in self._hf:
            self._hf[name] = transformers.AutoModelForCausalLM.from_pretrained(
                self.path(name), dtype=torch.float32
            ).eval()
        return self._hf[name]

    def llm(self, name: str, **engine_args: Any) -> LLM:
        """A corral `LLM` over model ``name`` (float32), cached per engine arguments."""
        args = {"dtype": "float32", "num_kv_blocks": 256, "max_model_len": 512, **engine_args}
        key = (name, tuple(sorted(args.items())))
        if key not in self._llms:
            self._llms[key] = LLM(str(self.path(name)), **args)
        return self._llms[key]
