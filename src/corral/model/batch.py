"""Turning a `SchedulerOutput` into the flattened varlen tensors of one forward pass."""

from __future__ import annotations

import attrs
import torch

from corral.core.interface import SchedulerOutput
from corral.model.layers.attention import AttentionMetadata
from corral.model.sampler import SampleRow


@attrs.frozen
class PromptLogprobsSpan:
    """Prompt tokens of one entry whose logprobs this step computes.

    Attributes:
        seq_id: The sequence they belong to.
        num_top: How many top tokens the request asked for.
        target_ids: The prompt tokens, in order (token ``t`` is predicted from position ``t - 1``).
    """

    seq_id: int
    num_top: int
    target_ids: list[int]


@attrs.frozen
class ModelInput:
    """One step's tensors, with no padding between sequences.

    Attributes:
        input_ids: int64 [num_tokens], the concatenated new tokens of all entries.
        positions: int64 [num_tokens], each token's position in its sequence.
        metadata: Cache slots, sequence boundaries, context lengths and block tables.
        sample_indices: Token indices whose logits are sampled (one per sample row).
        sample_rows: What each sampled row needs from its request.
        prompt_indices: Token indices whose logits give prompt logprobs, span by span.
        prompt_spans: One per entry that computes prompt logprobs, in the same order.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    sample_indices: list[int]
    sample_rows: list[SampleRow]
    prompt_indices: list[int]
    prompt_spans: list[PromptLogprobsSpan]


def prepare_input(scheduler_output: SchedulerOutput, device: torch.device) -> ModelInput:
    """Flatten the scheduled entries into one batch (layout in `corral.core.interface`).

    A chunk computing tokens ``[a, b)`` of a request that asked for prompt logprobs
    covers prompt tokens ``a+1 .. min(b, num_prompt_tokens - 1)``: the hidden state
    at position ``t - 1`` predicts token ``t``.
    """
    input_ids: list[int] = []
    starts: list[int] = []
    query_start_loc = [0]
    seq_lens: list[int] = []
    sample_indices: list[int] = []
    sample_rows: list[SampleRow] = []
    prompt_indices: list[int] = []
    prompt_spans: list[PromptLogprobsSpan] = []
    entries = zip(
        scheduler_output.seqs,
        scheduler_output.num_new_tokens,
        scheduler_output.num_samples,
        strict=True,
    )
    for seq, num_new, num_samples in entries:
        start = seq.num_computed_tokens
        end = start + num_new
        offset = query_start_loc[-1]
        token_ids = seq.token_ids
        input_ids.extend(token_ids[start:end])
        starts.append(start)
        query_start_loc.append(offset + num_new)
        seq_lens.append(end)
        num_prompt = seq.num_prompt_tokens
        params = seq.params
        if num_samples:
            prompt_ids = token_ids[:num_prompt]
            output_ids = token_ids[num_prompt:]
            indices = range(num_samples) if num_samples > 1 else (seq.seq_index,)
            for seq_index in indices:
                sample_indices.append(offset + num_new - 1)
                sample_rows.append(SampleRow(params, seq_index, prompt_ids, output_ids))
        last_target = min(end, num_prompt - 1)
        if params.prompt_logprobs is not None and last_target > start:
            prompt_indices.extend(range(offset, offset + last_target - start))
            prompt_spans.append(
                PromptLogprobsSpan(
                    seq.seq_id, params.prompt_logprobs, token_ids[start + 1 : last_target + 1]
                )
            )
    max_blocks = max(len(seq.block_table) for seq in scheduler_output.seqs)
    block_tables = [
        [*seq.block_table, *([0] * (max_blocks - len(seq.block_table)))]
        for seq in scheduler_output.seqs
    ]
    counts = torch.tensor(scheduler_output.num_new_tokens, dtype=torch.int64)
    starts_tensor = torch.tensor(starts, dtype=torch.int64)
    qsl_tensor = torch.tensor(query_start_loc, dtype=torch.int64)
    # Each token's position is its flat index shifted by where its entry starts.
    shift = torch.repeat_interleave(starts_tensor - qsl_tensor[:-1], counts)
    positions = torch.arange(len(input_ids), dtype=torch.int64) + shift
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(scheduler_output.slot_mapping, dtype=torch.int64, device=device),
        query_start_loc=qsl_tensor.to(device=device, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(block_tables, dtype=torch.int32, device=device),
    )
    return ModelInput(
        input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
        positions=positions.to(device),
        metadata=metadata,
        sample_indices=sample_indices,
        sample_rows=sample_rows,
        prompt_indices=prompt_indices,
        prompt_spans=prompt_spans,
    )
