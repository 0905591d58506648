"""tensor_parallel_size=2 generates what tensor_parallel_size=1 and transformers do."""

from __future__ import annotations

from typing import Any

import pytest

from corral.distributed.tp_executor import TensorParallelError
from corral.llm import LLM
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import compare_tokens, compare_with_logprobs
from tests.distributed.tp.conftest import TensorParallelZoo
from tests.model.test_model_parity import hf_greedy, random_prompts

PROMPT_LENGTHS = (1, 23, 150)
LOGPROB_TOLERANCE = 1e-4
ENGINE = {"dtype": "float32", "num_kv_blocks": 256, "max_model_len": 512}

# Every architecture and attention layout of the zoo: GQA with KV heads split (llama,
# qwen3), MQA with its one KV head replicated on both ranks (llama3-rope, mistral,
# qwen2-window), full MHA with q/k/v/o biases (qwen3-bias), GPT-2's fused c_attn, and
# vocabularies of odd size (padded by the vocab-parallel embedding and head).
MODELS = [
    "llama",
    "llama3-rope",
    "mistral",
    "qwen2-window",
    "qwen3",
    "qwen3-bias",
    "gpt2",
    "llama-odd-vocab",
    "gpt2-odd-vocab",
]


def generate(llm: LLM, prompts: list[list[int]]) -> list[RequestOutput]:
    params = SamplingParams(temperature=0.0, max_tokens=64, logprobs=5)
    return llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)


def tensor_parallel_llm(zoo: TensorParallelZoo, name: str, **args: Any) -> LLM:
    return LLM(str(zoo.path(name)), tensor_parallel_size=2, **ENGINE, **args)


def assert_parity(zoo: TensorParallelZoo, name: str, parallel: list[RequestOutput]) -> None:
    single_llm = LLM(str(zoo.path(name)), **ENGINE)
    prompts = [list(o.prompt_token_ids) for o in parallel]
    single = generate(single_llm, prompts)
    tokenizer = single_llm.get_tokenizer()
    references = hf_greedy(
        zoo.hf_model(name), prompts, tokenizer.pad_token_id, tokenizer.eos_token_id
    )
    compared = 0
    for prompt, one, two, ref in zip(prompts, single, parallel, references, strict=True):
        context = f"{name}, prompt of {len(prompt)} tokens"
        a, b = one.outputs[0], two.outputs[0]
        assert a.logprobs is not None and b.logprobs is not None
        agree_hf = compare_tokens(ref.tokens, b.token_ids, ref.logits, context=context + " vs HF")
        agree = compare_with_logprobs(a.token_ids, b.token_ids, a.logprobs, context=context)
        compared += min(agree, agree_hf)
        for step in range(agree):
            for token, logprob in b.logprobs[step].items():
                if token in a.logprobs[step]:
                    assert abs(logprob - a.logprobs[step][token]) <= LOGPROB_TOLERANCE, context
    assert compared >= len(prompts) * 64 // 2


@pytest.mark.parametrize("name", MODELS)
def test_tensor_parallel_greedy_equals_single_rank_and_transformers(
    tp_zoo: TensorParallelZoo, name: str
) -> None:
    llm = tensor_parallel_llm(tp_zoo, name)
    try:
        if name.endswith("odd-vocab"):
            assert llm.model_config.vocab_size % 2 == 1
        prompts = random_prompts(llm.model_config.vocab_size, PROMPT_LENGTHS, seed=len(name))
        parallel = generate(llm, prompts)
    finally:
        llm.engine_core.runner.shutdown()
    assert_parity(tp_zoo, name, parallel)


def test_swaps_and_copies_apply_on_every_rank(tp_zoo: TensorParallelZoo) -> None:
    # A cache too small for the batch forces swap preemption, and n=3 forks share
    # a partial block (copy-on-write): both must move the workers' blocks too.
    args = {
        "num_kv_blocks": 24,
        "block_size": 8,
        "max_model_len": 128,
        "preemption_mode": "swap",
        "swap_space": 0.01,
    }
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=40)
    prompts = random_prompts(300, (30, 45, 60, 17), seed=3)
    path = str(tp_zoo.path("llama"))
    engine = {**ENGINE, **args}
    single = LLM(path, **engine).generate(
        prompt_token_ids=prompts, sampling_params=params, use_tqdm=False
    )
    llm = LLM(path, tensor_parallel_size=2, **engine)
    kv_cache = llm.engine_core.runner.kv_cache
    moved: dict[str, int] = {"swap_out": 0, "swap_in": 0, "copy": 0}

    def counting(kind: str) -> Any:
        method = getattr(kv_cache, kind)

        def move(mapping: list[tuple[int, int]]) -> None:
            moved[kind] += len(mapping)
            method(mapping)

        return move

    for kind in moved:
        setattr(kv_cache, kind, counting(kind))
    try:
        parallel = llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    finally:
        llm.engine_core.runner.shutdown()
    assert all(moved.values()), moved
    for one, two in zip(single, parallel, strict=True):
        assert [c.token_ids for c in one.outputs] == [c.token_ids for c in two.outputs]


def test_ray_backend_matches_and_names_a_killed_actor(tp_zoo: TensorParallelZoo) -> None:
    ray = pytest.importorskip("ray")
    llm = tensor_parallel_llm(tp_zoo, "llama", distributed_executor_backend="ray")
    workers = llm.engine_core.runner.workers
    try:
        prompts = random_prompts(llm.model_config.vocab_size, PROMPT_LENGTHS, seed=11)
        parallel = generate(llm, prompts)
        ray.kill(workers.actors[0])
        with pytest.raises(TensorParallelError, match=r"rank 1 \(Ray actor [0-9a-f]+\) died"):
            generate(llm, prompts[:1])
        assert not workers.actors and workers.placement_group is None
    finally:
        llm.engine_core.runner.shutdown()
    assert_parity(tp_zoo, "llama", parallel)
