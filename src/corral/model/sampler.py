"""Choosing next tokens for a batch of sampling rows, with logprobs and per-request seeds."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from corral.core.interface import Logprobs
from corral.model.logits_transforms import (
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    token_counts,
)
from corral.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, seq_index: int, output_pos: int) -> int:
    """The generator seed of one seeded sample: a pure function of its coordinates.

    Mixing (not adding) the three keeps nearby coordinates from sharing streams.
    """
    mixed = _splitmix64(seed & _MASK64)
    mixed = _splitmix64(mixed ^ seq_index)
    return _splitmix64(mixed ^ output_pos) >> 1


@attrs.frozen
class SampleRow:
    """One token to draw.

    Attributes:
        params: The request's sampling parameters.
        seq_index: Which sample of the request this row feeds (the seed's second key).
        prompt_ids: The request's prompt (for the repetition penalty).
        output_ids: Tokens generated so far by this sequence (penalties, processors, min_tokens).
    """

    params: SamplingParams
    seq_index: int
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]


@attrs.define
class SamplerOutput:
    """Per row: the chosen token, its raw logprob, and the top logprobs when asked."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[Logprobs | None]


class Sampler:
    """Applies every `SamplingParams` to a batch of logits rows and draws tokens.

    Sampling uses the exponential race (argmax of ``p / E`` with ``E ~ Exp(1)``), which
    draws from ``p`` exactly and lets seeded rows take their noise from a private
    generator while the others share one batched draw.

    Args:
        eos_token_ids: Masked while a request is below ``min_tokens`` (unless ignore_eos).
        seed: Seed of the generator that unseeded rows share.
        device: Where logits live.
    """

    def __init__(self, eos_token_ids: Sequence[int], seed: int, device: torch.device) -> None:
        self.eos_token_ids = tuple(eos_token_ids)
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> SamplerOutput:
        """Draw one token per row of ``logits`` [rows, vocab] (float32)."""
        raw_logprobs = logits.log_softmax(dim=-1)
        logits = self._process(logits, rows)
        greedy = torch.tensor([row.params.greedy for row in rows], device=self.device)
        token_ids = logits.argmax(dim=-1)
        if not bool(greedy.all()):
            sampled = self._sample(logits, rows)
            token_ids = torch.where(greedy, token_ids, sampled)
        chosen_logprobs = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
        ids = token_ids.tolist()
        return SamplerOutput(
            token_ids=ids,
            logprobs=chosen_logprobs.tolist(),
            top_logprobs=top_logprobs(raw_logprobs, ids, [row.params.logprobs for row in rows]),
        )

    def _process(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
        logits = logits.clone()
        for index, row in enumerate(rows):
            for processor in row.params.logits_processors:
                logits[index] = processor(list(row.output_ids), logits[index])
        penalized = [
            i
            for i, row in enumerate(rows)
            if row.params.repetition_penalty != 1.0
            or row.params.frequency_penalty != 0.0
            or row.params.presence_penalty != 0.0
        ]
        if penalized:
            vocab_size = logits.shape[1]
            picked = [rows[i] for i in penalized]
            rows_index = torch.tensor(penalized, device=self.device)
            logits[rows_index] = apply_penalties(
                logits[rows_index],
                token_counts([list(r.prompt_ids) for r in picked], vocab_size, self.device),
                token_counts([list(r.output_ids) for r in picked], vocab_size, self.device),
                self._column([r.params.repetition_penalty for r in picked]),
                self._column([r.params.frequency_penalty for r in picked]),
                self._column([r.params.presence_penalty for r in picked]),
            )
        for index, row in enumerate(rows):
            if len(row.output_ids) < row.params.min_tokens:
                stop_ids = set(row.params.stop_token_ids)
                if not row.params.ignore_eos:
                    stop_ids.update(self.eos_token_ids)
                if stop_ids:
                    logits[index, sorted(stop_ids)] = float("-inf")
        return logits

    def _sample(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
        vocab_size = logits.shape[1]
        # Greedy rows are drawn here too (their argmax is kept instead); the floor only
        # keeps their division finite.
        temperature = self._column([max(row.params.temperature, 1e-5) for row in rows])
        logits = logits / temperature.unsqueeze(1)
        top_k = [vocab_size if row.params.top_k < 0 else row.params.top_k for row in rows]
        top_p = [row.params.top_p for row in rows]
        if any(k < vocab_size for k in top_k) or any(p < 1.0 for p in top_p):
            logits = apply_top_k_top_p(
                logits,
                torch.tensor(top_k, dtype=torch.int64, device=self.device),
                self._column(top_p),
            )
        min_p = [row.params.min_p for row in rows]
        if any(p > 0.0 for p in min_p):
            logits = apply_min_p(logits, self._column(min_p))
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for index, row in enumerate(rows):
            if row.params.seed is not None:
                seed = sample_seed(row.params.seed, row.seq_index, len(row.output_ids))
                generator = torch.Generator(device=self.device).manual_seed(seed)
                noise[index].exponential_(generator=generator)
        return (probs / noise).argmax(dim=-1)

    def _column(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)


def top_logprobs(
    logprobs: torch.Tensor, chosen: Sequence[int], num_top: Sequence[int | None]
) -> list[Logprobs | None]:
    """Per row: the chosen token's and the ``num_top`` most likely tokens' logprobs (None: not asked).

    Args:
        logprobs: [rows, vocab] raw log-probabilities.
        chosen: The token of each row that must appear (sampled or actual prompt token).
        num_top: How many top tokens each row asked for, None when it asked for none.
    """
    result: list[Logprobs | None] = [None] * len(chosen)
    wanted = [i for i, k in enumerate(num_top) if k is not None]
    if not wanted:
        return result
    k_max = min(max(num_top[i] or 0 for i in wanted), logprobs.shape[1])
    index = torch.tensor(wanted, device=logprobs.device)
    rows = logprobs[index]
    chosen_values = rows.gather(
        1, torch.tensor([chosen[i] for i in wanted], device=logprobs.device).unsqueeze(1)
    ).tolist()
    top_values, top_ids = rows.topk(k_max, dim=-1) if k_max else (rows[:, :0], rows[:, :0].long())
    top_values_list, top_ids_list = top_values.tolist(), top_ids.tolist()
    for n, i in enumerate(wanted):
        k = num_top[i] or 0
        entry: Logprobs = dict(zip(top_ids_list[n][:k], top_values_list[n][:k], strict=True))
        entry[chosen[i]] = chosen_values[n][0]
        result[i] = entry
    return result
