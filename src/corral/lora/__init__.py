"""Multi-LoRA serving: PEFT adapters applied to a built model, many in one batch.

`LoRARequest` (re-exported as ``corral.LoRARequest``) names an adapter. The model
layer wraps the model's projections from outside (`corral.lora.layers`), and
`corral.lora.manager.LoRAManager` keeps adapters in host memory (an LRU of
``max_cpu_loras``) and in ``max_loras`` device slots. See docs/lora.md.
"""

from corral.lora.request import LoRARequest as LoRARequest

__all__ = ["LoRARequest"]
