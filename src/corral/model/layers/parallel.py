"""How attention heads and the vocabulary are split over tensor-parallel ranks."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from corral.model.layers.linear import pack_weight, packed_linear
from corral.model.parallel_state import SINGLE, TensorParallelGroup
from corral.model.weights import CheckpointTensor, materialize


@attrs.frozen
class HeadSplit:
    """This rank's attention heads.

    Attributes:
        num_heads: Query heads on this rank (a contiguous run of the model's).
        num_kv_heads: Key/value heads on this rank.
        first_head: The model's index of this rank's first query head.
        first_kv_head: The model's index of this rank's first key/value head.
    """

    num_heads: int
    num_kv_heads: int
    first_head: int
    first_kv_head: int


def split_heads(num_heads: int, num_kv_heads: int, tp: TensorParallelGroup) -> HeadSplit:
    """Query heads split evenly; key/value heads too, or replicated when fewer than the ranks.

    With fewer key/value heads than ranks (MQA, narrow GQA), each rank keeps the one
    key/value head its query heads read, as vLLM does: ranks ``r * num_kv_heads //
    world_size`` share it, and each holds a copy in its KV cache.

    Raises:
        ValueError: when the heads cannot be split over the ranks.
    """
    heads = tp.split(num_heads, "num_attention_heads")
    if num_kv_heads >= tp.world_size:
        kv_heads = tp.split(num_kv_heads, "num_key_value_heads")
        return HeadSplit(heads, kv_heads, tp.rank * heads, tp.rank * kv_heads)
    if tp.world_size % num_kv_heads:
        raise ValueError(
            f"num_key_value_heads: tensor_parallel_size {tp.world_size} is not a multiple of "
            f"the {num_kv_heads} key/value heads, so they cannot be replicated evenly"
        )
    return HeadSplit(heads, 1, tp.rank * heads, tp.rank * num_kv_heads // tp.world_size)


class VocabParallelEmbedding(nn.Embedding):
    """A token embedding whose rows (the vocabulary) are split over the ranks.

    The vocabulary is padded to a multiple of the ranks; rank ``r`` holds rows
    ``r * rows_per_rank`` onwards (the padding rows are zero and never looked up).
    Each rank embeds the tokens it holds, zeros for the rest, and an all-reduce sums them.

    Args:
        vocab_size: Rows of the whole embedding.
        hidden_size: Embedding size.
        tp: The tensor-parallel group.
    """

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallelGroup = SINGLE) -> None:
        rows = -(-vocab_size // tp.world_size)
        super().__init__(rows, hidden_size)
        self.vocab_size = vocab_size
        self.vocab_start = tp.rank * rows
        self.vocab_end = min(self.vocab_start + rows, vocab_size)
        self.tp = tp
        self.weight.shard_loader = self._select  # type: ignore[attr-defined]

    def _select(self, tensor: CheckpointTensor) -> torch.Tensor:
        expected = (self.vocab_size, self.embedding_dim)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected {expected}")
        held = max(self.vocab_end - self.vocab_start, 0)
        rows = materialize(tensor.narrow(0, self.vocab_start, held))
        if held == self.num_embeddings:
            return rows
        padded = rows.new_zeros((self.num_embeddings, self.embedding_dim))
        padded[:held] = rows
        return padded

    # Whether `logits` multiplies with a copy of the weight packed for oneDNN, made on
    # its first call (only the module that computes logits pays for the copy). The
    # plain weight stays: lookups read it, and an output projection may share it with
    # the input embedding.
    pack_for_logits = False
    packed_weight: torch.Tensor | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return super().forward(input)
        outside = (input < self.vocab_start) | (input >= self.vocab_end)
        local = (input - self.vocab_start).masked_fill_(outside, 0)
        out = super().forward(local).masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)

    def logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor | None:
        """Logits [rows, vocab_size] of ``hidden`` through this matrix, on rank 0: float32,
        or in the model's dtype with ``float32=False`` (no copy of the whole batch).

        Each rank scores its slice of the vocabulary and rank 0 gathers the slices;
        the other ranks get None.
        """
        if self.pack_for_logits and self.packed_weight is None:
            self.packed_weight = pack_weight(self.weight)
        if self.packed_weight is not None:
            local = packed_linear(hidden, self.packed_weight, None)
        else:
            local = torch.nn.functional.linear(hidden, self.weight)
        gathered = self.tp.gather_last_dim(local)
        if gathered is None:
            return None
        logits = gathered[..., : self.vocab_size]
        return logits.float() if float32 else logits


class ParallelLMHead(VocabParallelEmbedding):
    """An output projection without bias, split over the vocabulary like the embedding."""
