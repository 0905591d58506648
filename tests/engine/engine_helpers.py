"""Helpers shared by the async engine tests: fake engines and solo reference runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corral.core.engine_core import EngineCore
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import FakeModelRunner, make_fake_core

# Guards every wait in these tests: a hang fails fast instead of stalling CI.
TIMEOUT = 20.0


def fake_core(
    *,
    step_delay: float = 0.0,
    fail_at_step: int | None = None,
    fail_on_token: int | None = None,
    **config: Any,
) -> EngineCore:
    """A fake-model core with the `make_fake_core` geometry (block_size 4, 64 blocks)."""
    runner = FakeModelRunner(
        block_size=config.get("block_size", 4),
        num_kv_blocks=config.get("num_kv_blocks", 64),
        num_host_blocks=config.get("num_host_blocks", 32),
        step_delay=step_delay,
        fail_at_step=fail_at_step,
        fail_on_token=fail_on_token,
    )
    return make_fake_core(runner, **config)


def run_alone(
    prompt_token_ids: Sequence[int], params: SamplingParams, **config: Any
) -> RequestOutput:
    """The final output of one request run by itself on a fresh synchronous core."""
    core = fake_core(**config)
    core.add_request("alone", list(prompt_token_ids), params)
    final = None
    while core.has_unfinished_requests():
        for output in core.step():
            if output.finished:
                final = output
    assert final is not None
    return final


def completions(output: RequestOutput) -> list[tuple[int, list[int], str, str | None]]:
    """What a comparison of two outputs looks at."""
    return [(c.index, c.token_ids, c.text, c.finish_reason) for c in output.outputs]


def greedy(max_tokens: int) -> SamplingParams:
    """Greedy sampling of exactly `max_tokens` tokens."""
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def build_tiny_model(folder: Path, corpus: Sequence[str]) -> str:
    """Save a 2-layer random-weight Llama with a BPE tokenizer trained on `corpus`."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(list(corpus) * 10, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>"
    )
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
