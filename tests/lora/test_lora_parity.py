"""A PEFT adapter run by corral equals transformers + PEFT on the same adapter (float32)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from corral import LoRARequest, SamplingParams
from corral.llm import LLM
from corral.testing import compare_tokens
from tests.lora.adapters import AdapterFactory
from tests.model.zoo import ModelZoo

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
NEW_TOKENS = 16
LOGPROB_TOLERANCE = 1e-4


def prompts_for(vocab_size: int, lengths: tuple[int, ...], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def reference_greedy(model: Any, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens of ``model`` (no EOS stop) and its logits at each step."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, len(prompt) :].tolist(), [step[0] for step in out.logits]


def lora_llm(zoo: ModelZoo, name: str, **extra: Any) -> LLM:
    return zoo.llm(name, enable_lora=True, max_loras=4, max_lora_rank=16, **extra)


def check_parity(
    llm: LLM, peft_model: Any, lora: LoRARequest | None, prompts: list[list[int]], context: str
) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=1, ignore_eos=True)
    outputs = llm.generate(
        prompt_token_ids=prompts, sampling_params=params, use_tqdm=False, lora_request=lora
    )
    for prompt, output in zip(prompts, outputs, strict=True):
        tokens, logits = reference_greedy(peft_model, prompt)
        completion = output.outputs[0]
        where = f"{context}, prompt of {len(prompt)} tokens"
        agree = compare_tokens(tokens, completion.token_ids, logits, context=where)
        assert agree > 0, where
        assert completion.logprobs is not None
        for step in range(agree):
            token = completion.token_ids[step]
            expected = float(logits[step].log_softmax(-1)[token])
            assert abs(completion.logprobs[step][token] - expected) <= LOGPROB_TOLERANCE, where


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_adapter_on_every_projection_matches_peft(
    zoo: ModelZoo, adapters: AdapterFactory, name: str
) -> None:
    folder, peft_model = adapters.make(name, seed=1)
    llm = lora_llm(zoo, name)
    prompts = prompts_for(llm.model_config.vocab_size, (5, 40), seed=3)
    lora = LoRARequest(f"{name}-all", 1, str(folder))
    check_parity(llm, peft_model, lora, prompts, f"{name} + adapter")


SHARD_COMBINATIONS = [
    ["q_proj", "v_proj"],
    ["k_proj"],
    ["gate_proj"],
    ["up_proj", "down_proj"],
    ["o_proj"],
]


@pytest.mark.parametrize("targets", SHARD_COMBINATIONS, ids=lambda t: "+".join(t))
def test_each_fused_shard_combination_matches_peft(
    zoo: ModelZoo, adapters: AdapterFactory, targets: list[str]
) -> None:
    folder, peft_model = adapters.make("llama", targets, r=4, alpha=8, seed=2)
    llm = lora_llm(zoo, "llama")
    prompts = prompts_for(llm.model_config.vocab_size, (12,), seed=4)
    lora = LoRARequest("+".join(targets), 10 + SHARD_COMBINATIONS.index(targets), str(folder))
    check_parity(llm, peft_model, lora, prompts, f"llama + {targets}")


def test_rslora_and_bin_weights_match_peft(zoo: ModelZoo, adapters: AdapterFactory) -> None:
    folder, peft_model = adapters.make(
        "qwen2", r=16, alpha=4, use_rslora=True, seed=5, safetensors=False
    )
    assert (folder / "adapter_model.bin").is_file()
    llm = lora_llm(zoo, "qwen2")
    prompts = prompts_for(llm.model_config.vocab_size, (9,), seed=6)
    check_parity(llm, peft_model, LoRARequest("rs", 3, str(folder)), prompts, "qwen2 rslora")


def test_base_requests_are_untouched_by_lora_support(zoo: ModelZoo) -> None:
    llm = lora_llm(zoo, "llama")
    prompts = prompts_for(llm.model_config.vocab_size, (7,), seed=7)
    check_parity(llm, zoo.hf_model("llama"), None, prompts, "llama base with enable_lora")
