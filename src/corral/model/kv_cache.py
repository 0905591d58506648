"""The paged KV cache: per-layer key/value block tensors on the device and on the host."""

from __future__ import annotations

import logging

import torch

from corral import ops
from corral.model.config import ModelConfig
from corral.model.layers.attention import KVCache

logger = logging.getLogger(__name__)


def blocks_for_memory(model_config: ModelConfig, block_size: int, memory_bytes: int) -> int:
    """How many KV blocks of ``block_size`` tokens fit in ``memory_bytes``."""
    return memory_bytes // (block_size * model_config.kv_bytes_per_token)


class PagedKVCache:
    """Device KV blocks for every layer, plus host blocks that preempted sequences swap to.

    Args:
        model_config: Layers, heads, head size and dtype of the cache.
        block_size: Tokens per block.
        num_blocks: Device blocks (block ids 0 .. num_blocks - 1).
        num_host_blocks: Host blocks for swapping (0 disables swapping).
        device: Device of the main cache.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        block_size: int,
        num_blocks: int,
        num_host_blocks: int,
        device: torch.device,
    ) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_kv_blocks: {num_blocks} blocks leave no room for the KV cache")
        if num_host_blocks < 0:
            raise ValueError(f"num_host_blocks: {num_host_blocks} is negative")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_host_blocks = num_host_blocks
        shape = (
            model_config.num_layers,
            2,
            num_blocks,
            block_size,
            model_config.num_kv_heads,
            model_config.head_size,
        )
        self._device_cache = torch.zeros(shape, dtype=model_config.cache_dtype, device=device)
        self.layers: list[KVCache] = [(layer[0], layer[1]) for layer in self._device_cache]
        host_shape = (*shape[:2], num_host_blocks, *shape[3:])
        self._host_cache = torch.zeros(
            host_shape, dtype=model_config.cache_dtype, pin_memory=device.type == "cuda"
        )
        self.host_layers: list[KVCache] = [(layer[0], layer[1]) for layer in self._host_cache]
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens, %.1f MiB) on %s, %d host blocks",
            num_blocks,
            block_size,
            num_blocks * block_size,
            self._device_cache.numel() * self._device_cache.element_size() / 2**20,
            device,
            num_host_blocks,
        )

    def swap_out(self, mapping: list[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks, ``(device_block, host_block)`` pairs."""
        self._swap(self.layers, self.host_layers, mapping)

    def swap_in(self, mapping: list[tuple[int, int]]) -> None:
        """Copy host blocks back to device blocks, ``(host_block, device_block)`` pairs."""
        self._swap(self.host_layers, self.layers, mapping)

    def copy(self, mapping: list[tuple[int, int]]) -> None:
        """Copy device blocks to device blocks (copy-on-write of shared blocks)."""
        if not mapping:
            return
        block_mapping = torch.tensor(mapping, dtype=torch.int64, device=self._device_cache.device)
        ops.copy_blocks(
            [key for key, _ in self.layers], [value for _, value in self.layers], block_mapping
        )

    @staticmethod
    def _swap(src: list[KVCache], dst: list[KVCache], mapping: list[tuple[int, int]]) -> None:
        if not mapping:
            return
        block_mapping = torch.tensor(mapping, dtype=torch.int64)
        for (src_key, src_value), (dst_key, dst_value) in zip(src, dst, strict=True):
            ops.swap_blocks(src_key, dst_key, block_mapping)
            ops.swap_blocks(src_value, dst_value, block_mapping)
