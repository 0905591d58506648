"""Which model class serves which HF ``architectures`` entry."""

from __future__ import annotations

from typing import Any

from torch import nn

from corral.model.models.gpt2 import GPT2LMHeadModel
from corral.model.models.llama import LlamaForCausalLM

_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "GPT2LMHeadModel": GPT2LMHeadModel,
}


def supported_architectures() -> list[str]:
    """The HF architecture names corral can run."""
    return sorted(_REGISTRY)


def resolve_architecture(hf_config: Any) -> tuple[str, type[nn.Module]]:
    """The first of the config's ``architectures`` corral implements, and its class.

    Raises:
        ValueError: when none is supported.
    """
    architectures = list(getattr(hf_config, "architectures", None) or [])
    for name in architectures:
        if name in _REGISTRY:
            return name, _REGISTRY[name]
    raise ValueError(
        f"architectures: {architectures or 'none given'} not supported "
        f"(supported: {supported_architectures()})"
    )
