"""Many adapters in one batch: each request's tokens equal the same request run alone."""

from __future__ import annotations

from typing import Any

import pytest

from corral import LoRARequest, SamplingParams
from corral.llm import LLM
from corral.testing import compare_with_logprobs
from tests.lora.adapters import AdapterFactory
from tests.model.zoo import ModelZoo

MODEL = "qwen2"
NEW_TOKENS = 12


def greedy(max_tokens: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=2, ignore_eos=True)


def lora_requests(adapters: AdapterFactory, count: int) -> list[LoRARequest]:
    return [
        LoRARequest(f"a{i}", i, str(adapters.make(MODEL, r=4 + 2 * (i % 3), seed=100 + i)[0]))
        for i in range(1, count + 1)
    ]


def record_steps(llm: LLM) -> list[set[int]]:
    """The distinct adapters of every step the LLM's runner executes from now on."""
    manager = llm.engine_core.runner.lora_manager  # type: ignore[attr-defined]
    steps: list[set[int]] = []
    prepare = manager.prepare

    def spy(lora_ids: Any, *args: Any) -> None:
        steps.append({i for i in lora_ids if i})
        prepare(lora_ids, *args)

    manager.prepare = spy
    return steps


def test_mixed_batch_equals_each_request_alone(zoo: ModelZoo, adapters: AdapterFactory) -> None:
    loras: list[LoRARequest | None] = [None, *lora_requests(adapters, 6)]
    llm = LLM(
        str(zoo.path(MODEL)),
        dtype="float32",
        num_kv_blocks=256,
        max_model_len=256,
        enable_lora=True,
        max_loras=4,
        max_cpu_loras=7,
        max_lora_rank=8,
    )
    vocab = llm.model_config.vocab_size
    prompts = [[(7 * i + 3 * j) % (vocab - 3) + 3 for j in range(5 + 3 * i)] for i in range(14)]
    per_prompt = [loras[i % len(loras)] for i in range(len(prompts))]
    steps = record_steps(llm)
    together = llm.generate(
        prompt_token_ids=prompts, sampling_params=greedy(), use_tqdm=False, lora_request=per_prompt
    )
    assert max(len(s) for s in steps) == 4  # more adapters than slots: some waited
    assert all(len(s) <= 4 for s in steps)
    for prompt, lora, out in zip(prompts, per_prompt, together, strict=True):
        alone = llm.generate(
            prompt_token_ids=[prompt], sampling_params=greedy(), use_tqdm=False, lora_request=lora
        )[0]
        first = alone.outputs[0]
        assert first.logprobs is not None
        compare_with_logprobs(
            first.token_ids,
            out.outputs[0].token_ids,
            first.logprobs,
            context=f"prompt of {len(prompt)} tokens with {lora and lora.lora_name}",
        )


def test_adapters_change_the_output_and_never_share_prefix_blocks(
    zoo: ModelZoo, adapters: AdapterFactory
) -> None:
    a, b = lora_requests(adapters, 2)
    llm = LLM(
        str(zoo.path(MODEL)),
        dtype="float32",
        num_kv_blocks=256,
        max_model_len=256,
        enable_lora=True,
        max_loras=2,
    )
    prompt = list(range(3, 3 + 40))  # two full blocks of 16 to share
    kv = llm.engine_core.scheduler.kv
    outputs = {}
    for lora in (None, a, b, a):
        before = kv.prefix_cache_hits
        outputs.setdefault(lora, []).append(
            llm.generate(
                prompt_token_ids=[prompt],
                sampling_params=greedy(6),
                use_tqdm=False,
                lora_request=lora,
            )[0]
            .outputs[0]
            .token_ids
        )
        outputs.setdefault(("hits", lora), []).append(kv.prefix_cache_hits - before)
    assert outputs[("hits", None)] == [0]
    assert outputs[("hits", b)] == [0]  # the base's and a's blocks hold other KV
    assert outputs[("hits", a)][0] == 0 and outputs[("hits", a)][1] > 0  # a reuses its own
    assert outputs[a][0] == outputs[a][1]
    assert len({tuple(outputs[None][0]), tuple(outputs[a][0]), tuple(outputs[b][0])}) == 3


def test_lru_evicts_and_reloads_with_equal_results(zoo: ModelZoo, adapters: AdapterFactory) -> None:
    loras = lora_requests(adapters, 3)
    llm = LLM(
        str(zoo.path(MODEL)),
        dtype="float32",
        num_kv_blocks=256,
        max_model_len=256,
        enable_lora=True,
        enable_prefix_caching=False,
        max_loras=1,
        max_cpu_loras=2,
    )
    manager = llm.engine_core.runner.lora_manager  # type: ignore[attr-defined]
    prompt = [5, 9, 14, 3, 27, 8]

    def run(lora: LoRARequest) -> Any:
        return llm.generate(
            prompt_token_ids=[prompt], sampling_params=greedy(), use_tqdm=False, lora_request=lora
        )[0].outputs[0]

    first = run(loras[0])
    run(loras[1])
    run(loras[2])
    assert manager.resident_ids() == [2, 3]  # 1 was least recently used
    assert manager.num_evictions == 1
    again = run(loras[0])
    assert manager.num_loads == 4
    assert manager.resident_ids() == [3, 1]
    assert first.logprobs is not None
    compare_with_logprobs(first.token_ids, again.token_ids, first.logprobs, context="reloaded")


@pytest.mark.parametrize("max_loras", [1, 3])
def test_scheduler_never_runs_more_adapters_than_slots(
    zoo: ModelZoo, adapters: AdapterFactory, max_loras: int
) -> None:
    loras = lora_requests(adapters, 4)
    llm = LLM(
        str(zoo.path(MODEL)),
        dtype="float32",
        num_kv_blocks=256,
        max_model_len=256,
        enable_lora=True,
        max_loras=max_loras,
        max_cpu_loras=4,
    )
    steps = record_steps(llm)
    outputs = llm.generate(
        prompt_token_ids=[[4 + i, 5, 6] for i in range(8)],
        sampling_params=greedy(4),
        use_tqdm=False,
        lora_request=[loras[i % 4] for i in range(8)],
    )
    assert all(len(out.outputs[0].token_ids) == 4 for out in outputs)
    assert max(len(s) for s in steps) == max_loras
