"""A `ForwardStep` as one flat int64 buffer: what the driver sends its tensor-parallel
workers every step.

Everything a rank needs to run its shard is integers (token ids, positions, cache
slots, block tables, block moves, logit rows), so one packed buffer replaces pickling
tensors: it is a few kilobytes for a decode batch, and copying it is all the decoding.
"""

from __future__ import annotations

import torch

from corral.model.layers.attention import AttentionMetadata
from corral.model.runner import ForwardStep

_HEADER = 7


def _pairs(flat: torch.Tensor) -> list[tuple[int, int]]:
    values = flat.tolist()
    return list(zip(values[0::2], values[1::2], strict=True))


def pack_step(step: ForwardStep) -> bytes:
    """The step as bytes for `unpack_step`."""
    parts: list[torch.Tensor] = []
    moves = (step.blocks_to_swap_out, step.blocks_to_swap_in, step.blocks_to_copy)
    num_tokens = num_seqs = max_blocks = 0
    tensors: list[torch.Tensor] = []
    if step.input_ids is not None and step.positions is not None and step.metadata is not None:
        metadata = step.metadata
        num_tokens = int(step.input_ids.numel())
        num_seqs, max_blocks = metadata.block_tables.shape
        tensors = [
            step.input_ids,
            step.positions,
            metadata.slot_mapping,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables.reshape(-1),
        ]
    header = [*(len(m) for m in moves), num_tokens, num_seqs, max_blocks, len(step.logit_rows)]
    parts.append(torch.tensor(header, dtype=torch.int64))
    parts.extend(torch.tensor(m, dtype=torch.int64).reshape(-1) for m in moves)
    parts.extend(t.to(device="cpu", dtype=torch.int64) for t in tensors)
    parts.append(torch.tensor(step.logit_rows, dtype=torch.int64))
    return torch.cat(parts).numpy().tobytes()


def unpack_step(payload: bytes, device: torch.device) -> ForwardStep:
    """The `ForwardStep` that `pack_step` packed, its tensors on ``device``."""
    flat = torch.frombuffer(bytearray(payload), dtype=torch.int64)
    header = flat[:_HEADER].tolist()
    num_out, num_in, num_copy, num_tokens, num_seqs, max_blocks, num_rows = header
    sizes = [
        2 * num_out,
        2 * num_in,
        2 * num_copy,
        num_tokens,
        num_tokens,
        num_tokens,
        num_seqs + 1 if num_tokens else 0,
        num_seqs,
        num_seqs * max_blocks,
        num_rows,
    ]
    if _HEADER + sum(sizes) != flat.numel():
        raise ValueError(f"step payload: {flat.numel()} values, header says {_HEADER + sum(sizes)}")
    out, in_, copy, ids, pos, slots, qsl, lens, tables, rows = flat[_HEADER:].split(sizes)
    step = ForwardStep(_pairs(out), _pairs(in_), _pairs(copy), logit_rows=rows.tolist())
    if not num_tokens:
        return step
    metadata = AttentionMetadata(
        slot_mapping=slots.to(device),
        query_start_loc=qsl.to(device=device, dtype=torch.int32),
        seq_lens=lens.to(device=device, dtype=torch.int32),
        block_tables=tables.reshape(num_seqs, max_blocks).to(device=device, dtype=torch.int32),
    )
    return ForwardStep(
        step.blocks_to_swap_out,
        step.blocks_to_swap_in,
        step.blocks_to_copy,
        input_ids=ids.to(device),
        positions=pos.to(device),
        metadata=metadata,
        logit_rows=step.logit_rows,
    )
