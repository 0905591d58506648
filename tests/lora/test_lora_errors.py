"""Bad adapters and bad LoRA requests fail with a ValueError naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from corral import LoRARequest, SamplingParams
from corral.config import EngineArgs
from corral.errors import NotSupportedError
from corral.llm import LLM
from tests.lora.adapters import AdapterFactory
from tests.model.zoo import ModelZoo


@pytest.fixture(scope="module")
def llm(zoo: ModelZoo) -> LLM:
    return zoo.llm("llama", enable_lora=True, max_loras=2, max_lora_rank=8)


def run(llm: LLM, lora: LoRARequest) -> None:
    llm.generate(
        prompt_token_ids=[[4, 5, 6]],
        sampling_params=SamplingParams(max_tokens=2),
        use_tqdm=False,
        lora_request=lora,
    )


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "adapter"
    shutil.copytree(folder, target)
    return target


def test_missing_folder(llm: LLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lora_path is not a folder"):
        run(llm, LoRARequest("x", 1, str(tmp_path / "nowhere")))


def test_missing_config(llm: LLM, adapters: AdapterFactory, tmp_path: Path) -> None:
    folder = copy_of(adapters.make("llama", r=4)[0], tmp_path)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(ValueError, match=r"missing adapter_config\.json"):
        run(llm, LoRARequest("x", 1, str(folder)))


def test_missing_weights(llm: LLM, adapters: AdapterFactory, tmp_path: Path) -> None:
    folder = copy_of(adapters.make("llama", r=4)[0], tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="missing weights"):
        run(llm, LoRARequest("x", 1, str(folder)))


def test_rank_above_max_lora_rank(llm: LLM, adapters: AdapterFactory) -> None:
    folder = adapters.make("llama", r=16)[0]
    with pytest.raises(ValueError, match="rank 16 exceeds max_lora_rank=8"):
        run(llm, LoRARequest("big", 1, str(folder)))


def test_unknown_target_module(llm: LLM, adapters: AdapterFactory, tmp_path: Path) -> None:
    folder = copy_of(adapters.make("llama", r=4)[0], tmp_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = ["q_proj", "lm_head"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown target module 'lm_head'"):
        run(llm, LoRARequest("x", 1, str(folder)))


def test_shape_mismatch_with_another_model_size(llm: LLM, adapters: AdapterFactory) -> None:
    folder = adapters.make("llama-mha", r=4)[0]  # hidden 160, the base has 256
    with pytest.raises(ValueError, match="shape mismatch"):
        run(llm, LoRARequest("x", 1, str(folder)))


def test_adapter_of_another_architecture(llm: LLM, adapters: AdapterFactory) -> None:
    folder = adapters.make("gpt2", r=4)[0]
    with pytest.raises(ValueError, match="another base architecture"):
        run(llm, LoRARequest("x", 1, str(folder)))


def test_unsupported_peft_option(llm: LLM, adapters: AdapterFactory, tmp_path: Path) -> None:
    folder = copy_of(adapters.make("llama", r=4)[0], tmp_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["use_dora"] = True
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="DoRA is not supported"):
        run(llm, LoRARequest("x", 1, str(folder)))


def test_one_id_for_two_adapters(llm: LLM, adapters: AdapterFactory) -> None:
    run(llm, LoRARequest("first", 40, str(adapters.make("llama", r=4, seed=1)[0])))
    with pytest.raises(ValueError, match="lora_int_id 40 already names adapter 'first'"):
        run(llm, LoRARequest("second", 40, str(adapters.make("llama", r=4, seed=2)[0])))


def test_engine_keeps_serving_after_a_bad_adapter(llm: LLM, adapters: AdapterFactory) -> None:
    with pytest.raises(ValueError):
        run(llm, LoRARequest("x", 1, "/nonexistent"))
    run(llm, LoRARequest("good", 2, str(adapters.make("llama", r=4)[0])))


def test_lora_request_without_enable_lora(zoo: ModelZoo) -> None:
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        run(zoo.llm("llama"), LoRARequest("x", 1, "/anything"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("", 1, "/p"), "lora_name"),
        (("a", 0, "/p"), "lora_int_id"),
        (("a", True, "/p"), "lora_int_id"),
        (("a", 1, ""), "lora_path"),
    ],
)
def test_lora_request_fields_are_checked(fields: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoRARequest(*fields)


def test_lora_with_tensor_parallelism_is_refused() -> None:
    with pytest.raises(NotSupportedError, match="issue 15"):
        EngineArgs(model="m", enable_lora=True, tensor_parallel_size=2)


def test_max_cpu_loras_below_max_loras_is_refused() -> None:
    with pytest.raises(ValueError, match="max_cpu_loras"):
        EngineArgs(model="m", enable_lora=True, max_loras=4, max_cpu_loras=2)
