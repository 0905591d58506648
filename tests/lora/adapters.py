"""PEFT adapters with non-zero random weights for the zoo's models, saved with PEFT itself."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from tests.model.zoo import ModelZoo

ALL_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
"""Every projection corral applies LoRA to, per model family."""


def all_targets(model_name: str) -> list[str]:
    return ALL_TARGETS["gpt2" if model_name.startswith("gpt2") else "llama"]


class AdapterFactory:
    """Builds (and caches) PEFT adapter folders and their transformers + PEFT twins."""

    def __init__(self, zoo: ModelZoo, root: Path) -> None:
        self.zoo = zoo
        self.root = root
        self._made: dict[tuple[Any, ...], tuple[Path, Any]] = {}

    def make(
        self,
        model_name: str,
        targets: list[str] | None = None,
        *,
        r: int = 8,
        alpha: float = 16,
        use_rslora: bool = False,
        seed: int = 0,
        safetensors: bool = True,
    ) -> tuple[Path, Any]:
        """(adapter folder, the PEFT model in eval mode) for ``model_name``."""
        targets = targets or all_targets(model_name)
        key = (model_name, tuple(targets), r, alpha, use_rslora, seed, safetensors)
        if key not in self._made:
            base = transformers.AutoModelForCausalLM.from_pretrained(
                self.zoo.path(model_name), dtype=torch.float32
            )
            config = peft.LoraConfig(
                r=r,
                lora_alpha=alpha,
                target_modules=targets,
                use_rslora=use_rslora,
                init_lora_weights=False,
                lora_dropout=0.0,
                # GPT-2's Conv1D stores [in, out]; PEFT's A and B keep nn.Linear's layout.
                fan_in_fan_out=model_name.startswith("gpt2"),
            )
            torch.manual_seed(seed)
            with warnings.catch_warnings():
                # PEFT reads transformers' deprecated is_gradient_checkpointing.
                warnings.simplefilter("ignore", FutureWarning)
                model = peft.get_peft_model(base, config)
            # PEFT's random init of B is small next to A's; scale it up so that the
            # adapter moves the logits well past float32 noise.
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0.0, 0.05)
            folder = self.root / f"{model_name}-{len(self._made)}"
            model.save_pretrained(folder, safe_serialization=safetensors)
            self._made[key] = (folder, model.eval())
        return self._made[key]
