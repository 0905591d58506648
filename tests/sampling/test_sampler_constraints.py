"""The sampler's token constraints on a mixed batch, against a row-by-row reference."""

from __future__ import annotations

import math

import attrs
import torch

from corral.model.sampler import Sampler, SampleRow
from corral.sampling_params import SamplingParams

VOCAB = 32
CPU = torch.device("cpu")


def reference(logits: torch.Tensor, row: SampleRow) -> torch.Tensor:
    """One row's logits after the constraints, the obvious way."""
    out = logits.clone()
    params = row.params
    if params.allowed_token_ids is not None:
        keep = torch.full((VOCAB,), False)
        keep[list(params.allowed_token_ids)] = True
        out[~keep] = -math.inf
    for word in params.bad_words_token_ids or ():
        prefix = list(word[:-1])
        tail = list(row.output_ids[len(row.output_ids) - len(prefix) :]) if prefix else []
        if len(prefix) <= len(row.output_ids) and tail == prefix:
            out[word[-1]] = -math.inf
    for token, bias in (params.logit_bias or {}).items():
        out[token] += bias
    return out


def test_constraints_apply_per_row_and_leave_other_rows_alone() -> None:
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    bad = attrs.evolve(
        SamplingParams(temperature=0.0, bad_words=["x"]), _bad_words_token_ids=((4,), (7, 9))
    )
    rows = [
        SampleRow(SamplingParams(temperature=0.0), 0, [1], [2]),
        SampleRow(SamplingParams(temperature=0.0, logit_bias={3: 5.0, 8: -2.5}), 0, [1], []),
        SampleRow(SamplingParams(temperature=0.0, allowed_token_ids=[1, 30]), 0, [1], [2]),
        SampleRow(bad, 0, [1], [3, 7]),
        SampleRow(
            SamplingParams(temperature=0.0, allowed_token_ids=[4, 9, 10], logit_bias={10: -50}),
            0,
            [1],
            [],
        ),
    ]
    sampler = Sampler(eos_token_ids=[0], seed=0, device=CPU)
    processed = sampler._process(logits, rows)
    for i, row in enumerate(rows):
        assert torch.equal(processed[i], reference(logits[i], row)), i
    out = sampler(logits, rows)
    assert out.token_ids == [int(reference(logits[i], r).argmax()) for i, r in enumerate(rows)]
    # The raw distribution's logprobs, not the constrained one's.
    raw = logits.log_softmax(dim=-1)
    for i, token in enumerate(out.token_ids):
        assert math.isclose(out.logprobs[i], float(raw[i, token]), abs_tol=1e-5)


def test_a_batch_without_constraints_is_not_copied() -> None:
    logits = torch.randn(3, VOCAB)
    rows = [SampleRow(SamplingParams(temperature=0.0), 0, [1], []) for _ in range(3)]
    assert Sampler(eos_token_ids=[], seed=0, device=CPU)._process(logits, rows) is logits
