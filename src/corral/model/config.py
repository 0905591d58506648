"""The model facts the runner, the cache and the front doors need, read once from the HF config."""

from __future__ import annotations

import functools
import logging
import pathlib
from typing import Any

import attrs
import torch

logger = logging.getLogger(__name__)

# CPU features with a bfloat16 GEMM faster than float32's: AVX512-BF16 dot products
# (about 2-3x) and AMX tiles (about 6x on the Xeons measured, see docs/kernels.md).
FAST_BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@attrs.frozen
class ModelConfig:
    """Shape and identity of a loaded model.

    Attributes:
        path: The local folder the model was loaded from.
        architecture: The entry of the HF config's ``architectures`` that selected the model class.
        hf_config: The transformers config object, for the model classes.
        dtype: The dtype of weights, activations and the KV cache.
        vocab_size: Rows of the output embedding; token ids must be below it.
        num_layers: Decoder layers, one KV cache per layer.
        num_kv_heads: Key/value heads per layer in this process's KV cache (a
            tensor-parallel rank holds its share).
        head_size: Size of one attention head.
        max_model_len: Longest context (prompt plus output) the model accepts.
        eos_token_ids: Token ids that end generation unless ``ignore_eos``.
        kv_cache_dtype: The KV cache's dtype when it is not ``dtype`` (a float8 cache).
    """

    path: str
    architecture: str
    hf_config: Any = attrs.field(repr=False)
    dtype: torch.dtype
    vocab_size: int
    num_layers: int
    num_kv_heads: int
    head_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    kv_cache_dtype: torch.dtype | None = None

    @property
    def cache_dtype(self) -> torch.dtype:
        """The dtype of the KV cache tensors."""
        return self.kv_cache_dtype or self.dtype

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of key and value cache one token occupies over all layers."""
        itemsize = torch.empty((), dtype=self.cache_dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_size * itemsize


def hf_head_size(hf_config: Any) -> int:
    """Head size as the HF models compute it: ``head_dim`` when set, else hidden / heads."""
    head_dim = getattr(hf_config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    return int(hf_config.hidden_size // hf_config.num_attention_heads)


def hf_num_kv_heads(hf_config: Any) -> int:
    """Key/value heads; configs without GQA leave ``num_key_value_heads`` unset."""
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None)
    return int(num_kv_heads or hf_config.num_attention_heads)


def hf_max_positions(hf_config: Any) -> int:
    """Longest context the model was built for (``n_positions`` on GPT-2)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(hf_config, name, None)
        if value:
            return int(value)
    raise ValueError("model config: neither max_position_embeddings nor n_positions is set")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them in /proc/cpuinfo (empty elsewhere)."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX)."""
    return bool(FAST_BFLOAT16_CPU_FLAGS & cpu_flags())


@functools.cache
def _log_auto_bfloat16(checkpoint: torch.dtype) -> None:
    logger.info(
        "dtype='auto': running bfloat16 weights and KV cache (checkpoint %s) on this CPU with "
        "hardware bfloat16 (%s); pass dtype='float32' for float32",
        str(checkpoint).removeprefix("torch."),
        ", ".join(sorted(FAST_BFLOAT16_CPU_FLAGS & cpu_flags())),
    )


def auto_cpu_dtype(checkpoint: torch.dtype) -> torch.dtype:
    """What ``dtype="auto"`` runs on the CPU for a checkpoint stored in ``checkpoint``.

    With hardware bfloat16 (AVX512-BF16 or AMX) every floating checkpoint runs in
    bfloat16, float32 ones included: the GEMMs run several times faster and the KV
    cache holds twice the tokens. The choice is logged once per process. Without
    it, float16 becomes bfloat16 (CPU float16 GEMMs have no fast path) and the
    rest stays as stored.
    """
    if cpu_has_fast_bfloat16():
        _log_auto_bfloat16(checkpoint)
        return torch.bfloat16
    return torch.bfloat16 if checkpoint == torch.float16 else checkpoint
