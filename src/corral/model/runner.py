"""`ModelRunner`: one scheduled step in, sampled tokens and logprobs out."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from corral.core.interface import Logprobs, ModelRunnerOutput, SchedulerOutput
from corral.lora.manager import LoRAManager
from corral.model.batch import ModelInput, prepare_input
from corral.model.config import ModelConfig
from corral.model.kv_cache import PagedKVCache
from corral.model.layers.attention import AttentionMetadata
from corral.model.sampler import Sampler, top_logprobs
from corral.model.structured import StructuredOutputs


@attrs.frozen
class ForwardStep:
    """What every tensor-parallel rank does in one step; the sampling stays with rank 0.

    Attributes:
        blocks_to_swap_out: ``(device block, host block)`` pairs, applied first.
        blocks_to_swap_in: ``(host block, device block)`` pairs.
        blocks_to_copy: ``(src, dst)`` device block pairs (copy-on-write).
        input_ids: int64 [num_tokens]; None for a step that only moves blocks.
        positions: int64 [num_tokens].
        metadata: The attention layout of the batch.
        logit_rows: Token indices whose logits the step needs (samples, then prompt logprobs).
    """

    blocks_to_swap_out: list[tuple[int, int]]
    blocks_to_swap_in: list[tuple[int, int]]
    blocks_to_copy: list[tuple[int, int]]
    input_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    metadata: AttentionMetadata | None = None
    logit_rows: list[int] = attrs.field(factory=list)


@torch.inference_mode()
def run_forward(model: nn.Module, kv_cache: PagedKVCache, step: ForwardStep) -> torch.Tensor | None:
    """Move the step's blocks, run the forward pass and return the logits of its rows,
    in the model's dtype (the sampler and the prompt logprobs widen what they need).

    Returns None when the step computes no logits, and on every tensor-parallel rank
    but the first (the others only take part in the collectives).
    """
    kv_cache.swap_out(step.blocks_to_swap_out)
    kv_cache.swap_in(step.blocks_to_swap_in)
    kv_cache.copy(step.blocks_to_copy)
    if step.input_ids is None or step.positions is None or step.metadata is None:
        return None
    hidden = model(step.input_ids, step.positions, kv_cache.layers, step.metadata)
    if not step.logit_rows:
        return None
    rows = torch.tensor(step.logit_rows, device=hidden.device)
    return model.compute_logits(hidden[rows], float32=False)  # type: ignore[operator, no-any-return]


class TorchModelRunner:
    """Runs a corral model over the paged KV cache (implements `corral.core.interface.ModelRunner`).

    Logits are computed only for the rows that sample and, for requests that asked
    for prompt logprobs, for the prompt positions this step covers.

    Args:
        model: A model from `corral.model.models` (``forward`` and ``compute_logits``).
        model_config: The model's facts.
        kv_cache: The cache the model reads and writes.
        sampler: Chooses the tokens.
        structured_outputs: Compiles grammars and masks the logits of structured
            requests; None for a runner that refuses them.
        lora_manager: Serves LoRA adapters to the model it wrapped; None without LoRA.
    """

    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        kv_cache: PagedKVCache,
        sampler: Sampler,
        structured_outputs: StructuredOutputs | None = None,
        lora_manager: LoRAManager | None = None,
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.structured_outputs = structured_outputs
        self.lora_manager = lora_manager
        self.device = kv_cache.layers[0][0].device

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Move blocks, run the forward pass and sample (contract: `corral.core.interface`)."""
        step = ForwardStep(
            scheduler_output.blocks_to_swap_out,
            scheduler_output.blocks_to_swap_in,
            scheduler_output.blocks_to_copy,
        )
        model_input: ModelInput | None = None
        if scheduler_output.seqs:
            model_input = prepare_input(scheduler_output, self.device)
            step = attrs.evolve(
                step,
                input_ids=model_input.input_ids,
                positions=model_input.positions,
                metadata=model_input.metadata,
                logit_rows=model_input.sample_indices + model_input.prompt_indices,
            )
        self.begin_step(step)
        lora = self.lora_manager
        if lora is not None and scheduler_output.seqs:
            lora.prepare(
                [seq.lora_int_id for seq in scheduler_output.seqs],
                scheduler_output.num_new_tokens,
            )
        try:
            logits = run_forward(self.model, self.kv_cache, step)
        finally:
            if lora is not None:
                lora.finish_step()
        if logits is None or model_input is None:
            return ModelRunnerOutput()
        num_sampled = len(model_input.sample_indices)
        output = ModelRunnerOutput()
        if num_sampled:
            if self.structured_outputs is not None:
                self.structured_outputs.apply(logits[:num_sampled], scheduler_output)
            sampled = self.sampler(logits[:num_sampled], model_input.sample_rows)
            output.sampled_token_ids = sampled.token_ids
            output.sampled_logprobs = sampled.logprobs
            output.top_logprobs = sampled.top_logprobs
            output.beam_candidates = sampled.beam_candidates
        if model_input.prompt_spans:
            output.prompt_logprobs = self._prompt_logprobs(
                logits[num_sampled:].float(), model_input
            )
        return output

    def begin_step(self, step: ForwardStep) -> None:
        """Called before this process runs ``step``: a tensor-parallel runner sends it
        to the other ranks here."""

    @staticmethod
    def _prompt_logprobs(
        logits: torch.Tensor, model_input: ModelInput
    ) -> dict[int, list[Logprobs]]:
        logprobs = logits.log_softmax(dim=-1)
        targets = [t for span in model_input.prompt_spans for t in span.target_ids]
        num_top = [span.num_top for span in model_input.prompt_spans for _ in span.target_ids]
        entries = top_logprobs(logprobs, targets, num_top)
        result: dict[int, list[Logprobs]] = {}
        offset = 0
        for span in model_input.prompt_spans:
            count = len(span.target_ids)
            result[span.seq_id] = [e for e in entries[offset : offset + count] if e is not None]
            offset += count
        return result
