"""`ModelRunner`: one scheduled step in, sampled tokens and logprobs out."""

from __future__ import annotations

import torch
from torch import nn

from corral.core.interface import Logprobs, ModelRunnerOutput, SchedulerOutput
from corral.model.batch import ModelInput, prepare_input
from corral.model.config import ModelConfig
from corral.model.kv_cache import PagedKVCache
from corral.model.sampler import Sampler, top_logprobs
from corral.model.structured import StructuredOutputs


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
    """

    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        kv_cache: PagedKVCache,
        sampler: Sampler,
        structured_outputs: StructuredOutputs | None = None,
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.structured_outputs = structured_outputs
        self.device = kv_cache.layers[0][0].device

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Move blocks, run the forward pass and sample (contract: `corral.core.interface`)."""
        self.kv_cache.swap_out(scheduler_output.blocks_to_swap_out)
        self.kv_cache.swap_in(scheduler_output.blocks_to_swap_in)
        self.kv_cache.copy(scheduler_output.blocks_to_copy)
        if not scheduler_output.seqs:
            return ModelRunnerOutput()
        model_input = prepare_input(scheduler_output, self.device)
        hidden = self.model(
            model_input.input_ids,
            model_input.positions,
            self.kv_cache.layers,
            model_input.metadata,
        )
        rows = model_input.sample_indices + model_input.prompt_indices
        if not rows:
            return ModelRunnerOutput()
        logits = self.model.compute_logits(  # type: ignore[operator]
            hidden[torch.tensor(rows, device=self.device)]
        )
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
            output.prompt_logprobs = self._prompt_logprobs(logits[num_sampled:], model_input)
        return output

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
