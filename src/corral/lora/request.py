"""`LoRARequest`: which adapter a request runs with (vLLM's name and fields)."""

from __future__ import annotations

import attrs


def _positive_id(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"lora_int_id must be a positive integer, got {value!r}")


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


@attrs.frozen
class LoRARequest:
    """A PEFT adapter to run a request with.

    Attributes:
        lora_name: The adapter's name (the server's ``model`` field selects it).
        lora_int_id: Identifies the adapter inside the engine: two requests with the
            same id run the same weights and share prefix-cache blocks; requests with
            different ids never share them. Positive.
        lora_path: A PEFT folder: ``adapter_config.json`` and
            ``adapter_model.safetensors`` (or ``adapter_model.bin``).
    """

    lora_name: str = attrs.field(validator=_non_empty)
    lora_int_id: int = attrs.field(validator=_positive_id)
    lora_path: str = attrs.field(validator=_non_empty)
