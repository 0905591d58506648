"""Which attention head sizes the native kernels of each device can run.

The rule lives in the kernels (native/cpu/vec_math.h ``kHeadSizeMultiple``,
native/cuda/attention.h ``is_supported_head_size``); it is mirrored here so that a
model the kernels cannot take is refused when it loads, with a clear error,
instead of killing the engine at its first step.
"""

from __future__ import annotations

import attrs
import torch

# Both kernel families read a head as whole SIMD vectors / 16-byte loads.
HEAD_SIZE_MULTIPLE = 16
# The CUDA kernels are instantiated per head size (registers and shared memory
# are sized at compile time), up to this one. The CPU kernels take any multiple.
CUDA_MAX_HEAD_SIZE = 256


@attrs.frozen
class HeadSizeSupport:
    """Head sizes one device's kernels accept: positive multiples of ``multiple``,
    at most ``maximum`` (None: no upper bound)."""

    device_type: str
    multiple: int
    maximum: int | None

    def accepts(self, head_size: int) -> bool:
        return (
            head_size > 0
            and head_size % self.multiple == 0
            and (self.maximum is None or head_size <= self.maximum)
        )

    def describe(self) -> str:
        bound = f" up to {self.maximum}" if self.maximum is not None else ""
        return f"a multiple of {self.multiple}{bound}"


def head_size_support(device: str | torch.device) -> HeadSizeSupport:
    """What the kernels of ``device`` (its type: "cpu" or "cuda") accept.

    Raises:
        ValueError: for a device type corral has no kernels for.
    """
    device_type = torch.device(device).type
    if device_type == "cpu":
        return HeadSizeSupport("cpu", HEAD_SIZE_MULTIPLE, None)
    if device_type == "cuda":
        return HeadSizeSupport("cuda", HEAD_SIZE_MULTIPLE, CUDA_MAX_HEAD_SIZE)
    raise ValueError(f"device: corral has no attention kernels for {device_type!r}")


def check_head_size(head_size: int, device: str | torch.device, architecture: str = "") -> None:
    """Refuse a model whose attention heads the kernels of ``device`` cannot run.

    Raises:
        ValueError: naming the head size, the device and what it accepts.
    """
    support = head_size_support(device)
    if not support.accepts(head_size):
        model = f"{architecture} " if architecture else ""
        raise ValueError(
            f"head_size: this {model}model has attention heads of size {head_size}, but "
            f"corral's {support.device_type} attention kernels need {support.describe()}"
        )
