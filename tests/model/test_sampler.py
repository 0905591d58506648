"""The sampler against transformers' logits processors and plain references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from corral.model.logits_transforms import (
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    token_counts,
)
from corral.model.sampler import Sampler, SampleRow, first_argmax, sample_seed
from corral.sampling_params import SamplingParams

VOCAB = 64
CPU = torch.device("cpu")


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def row(
    params: SamplingParams, output_ids: list[int] | None = None, seq_index: int = 0
) -> SampleRow:
    return SampleRow(params, seq_index, [1, 2, 3], output_ids or [])


@pytest.mark.parametrize("top_k", [1, 5, 17, VOCAB])
def test_top_k_matches_transformers(top_k: int) -> None:
    logits = random_logits(6)
    ours = apply_top_k_top_p(logits, torch.full((6,), top_k), torch.ones(6))
    theirs = TopKLogitsWarper(top_k)(None, logits.clone())
    assert torch.equal(ours.isinf(), theirs.isinf())
    assert torch.equal(ours[~ours.isinf()], logits[~ours.isinf()])


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.75, 0.99])
def test_top_p_matches_transformers(top_p: float) -> None:
    logits = random_logits(6, seed=1)
    ours = apply_top_k_top_p(logits, torch.full((6,), VOCAB), torch.full((6,), top_p))
    theirs = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(ours.isinf(), theirs.isinf())


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5])
def test_min_p_matches_transformers(min_p: float) -> None:
    logits = random_logits(6, seed=2)
    ours = apply_min_p(logits, torch.full((6,), min_p))
    theirs = MinPLogitsWarper(min_p)(None, logits.clone())
    assert torch.equal(ours.isinf(), theirs.isinf())


def test_per_row_truncation_parameters_apply_to_their_row_only() -> None:
    logits = random_logits(3, seed=3)
    top_k = torch.tensor([3, VOCAB, 10])
    top_p = torch.tensor([1.0, 0.5, 0.8])
    ours = apply_top_k_top_p(logits, top_k, top_p)
    for i in range(3):
        expected = TopPLogitsWarper(float(top_p[i]))(
            None, TopKLogitsWarper(int(top_k[i]))(None, logits[i : i + 1].clone())
        )
        assert torch.equal(ours[i : i + 1].isinf(), expected.isinf())


def test_repetition_penalty_matches_transformers() -> None:
    logits = random_logits(2, seed=4)
    prompt = [[1, 5, 9], [2, 2, 40]]
    output = [[9, 11], [63]]
    ours = apply_penalties(
        logits,
        token_counts(prompt, VOCAB, CPU),
        token_counts(output, VOCAB, CPU),
        torch.tensor([1.3, 0.7]),
        torch.zeros(2),
        torch.zeros(2),
    )
    for i, penalty in enumerate((1.3, 0.7)):
        seen = torch.tensor([prompt[i] + output[i]])
        expected = RepetitionPenaltyLogitsProcessor(penalty)(seen, logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i : i + 1], expected, rtol=0, atol=0)


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    logits = random_logits(1, seed=5)
    prompt, output = [[7, 7, 8]], [[8, 8, 8, 3]]
    ours = apply_penalties(
        logits,
        token_counts(prompt, VOCAB, CPU),
        token_counts(output, VOCAB, CPU),
        torch.ones(1),
        torch.tensor([0.5]),
        torch.tensor([0.25]),
    )
    expected = logits.clone()
    expected[0, 8] -= 3 * 0.5 + 0.25
    expected[0, 3] -= 1 * 0.5 + 0.25
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_greedy_rows_take_the_argmax_and_report_raw_logprobs() -> None:
    logits = random_logits(4, seed=6)
    params = SamplingParams(temperature=0.0, logprobs=3)
    out = Sampler([0], seed=0, device=CPU)(logits, [row(params)] * 4)
    assert out.token_ids == logits.argmax(-1).tolist()
    raw = logits.log_softmax(-1)
    for i, token in enumerate(out.token_ids):
        assert out.logprobs[i] == pytest.approx(float(raw[i, token]), abs=1e-6)
        top = out.top_logprobs[i]
        assert top is not None and set(top) == set(raw[i].topk(3).indices.tolist())


def test_logprobs_are_of_the_raw_distribution_and_include_the_sampled_token() -> None:
    logits = random_logits(8, seed=7)
    params = SamplingParams(temperature=5.0, logprobs=0, seed=3)
    out = Sampler([], seed=0, device=CPU)(logits, [row(params, seq_index=i) for i in range(8)])
    raw = logits.log_softmax(-1)
    for i, token in enumerate(out.token_ids):
        assert out.top_logprobs[i] == {token: pytest.approx(float(raw[i, token]), abs=1e-6)}


def test_seeded_sample_depends_only_on_seed_index_and_position() -> None:
    logits = random_logits(1, seed=8)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    other = SamplingParams(temperature=1.0)
    alone = Sampler([], seed=0, device=CPU)(logits, [row(seeded, [5, 6])]).token_ids[0]
    batch = torch.cat([random_logits(5, seed=9), logits, random_logits(3, seed=10)])
    rows = [row(other)] * 5 + [row(seeded, [5, 6])] + [row(other)] * 3
    in_batch = Sampler([], seed=99, device=CPU)(batch, rows).token_ids[5]
    assert alone == in_batch


def test_seeded_samples_vary_with_position_and_sample_index() -> None:
    logits = torch.zeros(1, VOCAB)
    params = SamplingParams(temperature=1.0, seed=7)
    sampler = Sampler([], seed=0, device=CPU)
    by_position = {sampler(logits, [row(params, [0] * k)]).token_ids[0] for k in range(32)}
    by_index = {sampler(logits, [row(params, seq_index=j)]).token_ids[0] for j in range(32)}
    assert len(by_position) > 10 and len(by_index) > 10
    assert sample_seed(7, 0, 1) != sample_seed(7, 1, 0)


def test_unseeded_samples_follow_the_distribution() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(4000, 4).clone()
    params = SamplingParams(temperature=1.0)
    tokens = Sampler([], seed=0, device=CPU)(logits, [row(params)] * 4000).token_ids
    frequencies = torch.bincount(torch.tensor(tokens), minlength=4).float() / 4000
    torch.testing.assert_close(frequencies, probs, rtol=0, atol=0.03)


def test_min_tokens_masks_eos_and_stop_tokens_until_reached() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 1] = 50.0
    logits[0, 2] = 40.0
    logits[0, 3] = 30.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2])
    sampler = Sampler([1], seed=0, device=CPU)
    assert sampler(logits, [row(params, [9])]).token_ids == [3]
    assert sampler(logits, [row(params, [9, 9])]).token_ids == [1]
    ignore = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2], ignore_eos=True)
    assert sampler(logits, [row(ignore, [9])]).token_ids == [1]


def test_logits_processors_see_output_ids_and_change_the_choice() -> None:
    seen: list[list[int]] = []

    def ban_top(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        seen.append(output_ids)
        logits[logits.argmax()] = float("-inf")
        return logits

    logits = random_logits(1, seed=11)
    params = SamplingParams(temperature=0.0, logits_processors=[ban_top])
    token = Sampler([], seed=0, device=CPU)(logits, [row(params, [4, 2])]).token_ids[0]
    assert token == int(logits[0].topk(2).indices[1])
    assert seen == [[4, 2]]


def expected_seeded_token(logits: torch.Tensor, params: SamplingParams, seq_index: int) -> int:
    """A seeded row's token, computed the one way the sampler promises: the exponential
    race over the truncated, temperature-scaled distribution, with the row's own noise."""
    scaled = logits.unsqueeze(0) / params.temperature
    top_k = VOCAB if params.top_k < 0 else params.top_k
    scaled = apply_top_k_top_p(scaled, torch.tensor([top_k]), torch.tensor([params.top_p]))
    probs = scaled.softmax(dim=-1)[0]
    assert params.seed is not None
    generator = torch.Generator().manual_seed(sample_seed(params.seed, seq_index, 0))
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())


def test_mixed_greedy_and_seeded_rows_get_the_tokens_each_asks_for() -> None:
    logits = random_logits(6, seed=12)
    greedy = SamplingParams(temperature=0.0)
    seeded = [
        SamplingParams(temperature=0.8, seed=5, top_k=10),
        SamplingParams(temperature=1.3, seed=6, top_p=0.9),
        SamplingParams(temperature=1.0, seed=7),
    ]
    params = [greedy, seeded[0], greedy, seeded[1], seeded[2], greedy]
    rows = [row(p, seq_index=i) for i, p in enumerate(params)]
    out = Sampler([], seed=0, device=CPU)(logits, rows)
    for i, p in enumerate(params):
        if p.greedy:
            assert out.token_ids[i] == int(logits[i].argmax())
        else:
            assert out.token_ids[i] == expected_seeded_token(logits[i], p, i)


def test_raw_logprobs_are_reported_for_rows_with_and_without_top_logprobs() -> None:
    logits = random_logits(4, seed=13)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, logprobs=2),
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=1.0, seed=2, logprobs=0),
    ]
    out = Sampler([], seed=0, device=CPU)(logits, [row(p) for p in params])
    raw = logits.log_softmax(-1)
    for i, token in enumerate(out.token_ids):
        assert out.logprobs[i] == pytest.approx(float(raw[i, token]), abs=1e-5)
    assert out.top_logprobs[0] is None and out.top_logprobs[2] is None
    assert out.top_logprobs[1] is not None and len(out.top_logprobs[1]) in (2, 3)
    assert out.top_logprobs[3] == {out.token_ids[3]: pytest.approx(float(raw[3, out.token_ids[3]]))}


class _Spy:
    """Counts calls of a tensor method and the rows each call saw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.rows: list[int] = []
        original = getattr(torch.Tensor, name)

        def spy(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            self.rows.append(tensor.shape[0] if tensor.dim() > 1 else 1)
            return original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)


def test_a_batch_that_asks_for_no_logprobs_computes_no_log_softmax(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_softmax = _Spy(monkeypatch, "log_softmax")
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=3)]
    Sampler([], seed=0, device=CPU)(random_logits(2, seed=14), [row(p) for p in params])
    assert log_softmax.rows == []


def test_log_softmax_covers_only_the_rows_that_ask_for_logprobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log_softmax = _Spy(monkeypatch, "log_softmax")
    params = [SamplingParams(temperature=0.0)] * 5 + [SamplingParams(temperature=0.0, logprobs=1)]
    Sampler([], seed=0, device=CPU)(random_logits(6, seed=15), [row(p) for p in params])
    assert log_softmax.rows == [1]


def test_an_all_greedy_batch_draws_no_noise_and_sorts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exponential = _Spy(monkeypatch, "exponential_")
    sort = _Spy(monkeypatch, "sort")
    softmax = _Spy(monkeypatch, "softmax")
    Sampler([], seed=0, device=CPU)(
        random_logits(8, seed=16), [row(SamplingParams(temperature=0))] * 8
    )
    assert exponential.rows == [] and sort.rows == [] and softmax.rows == []


def test_top_k_top_p_run_only_on_the_rows_that_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    sort = _Spy(monkeypatch, "sort")
    params = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.0, top_k=5),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_p=0.5),
        SamplingParams(temperature=1.0),
    ]
    Sampler([], seed=0, device=CPU)(random_logits(5, seed=17), [row(p) for p in params])
    assert sort.rows == [2]


def test_sampled_rows_draw_noise_only_for_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    exponential = _Spy(monkeypatch, "exponential_")
    params = [SamplingParams(temperature=0.0)] * 6 + [SamplingParams(temperature=1.0)] * 2
    Sampler([], seed=0, device=CPU)(random_logits(8, seed=18), [row(p) for p in params])
    assert exponential.rows == [2]


def test_logits_are_not_copied_when_no_row_edits_them() -> None:
    logits = random_logits(3, seed=19)
    sampler = Sampler([], seed=0, device=CPU)
    plain = [row(SamplingParams(temperature=0.0))] * 3
    assert sampler._process(logits, plain) is logits
    penalized = [row(SamplingParams(temperature=0.0, presence_penalty=0.5), [1])] * 3
    edited = sampler._process(logits, penalized)
    assert edited is not logits and torch.equal(logits, random_logits(3, seed=19))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 5),
    vocab=st.integers(1, 70),
    levels=st.integers(1, 4),
    nan_at=st.one_of(st.none(), st.integers(0, 10_000)),
    seed=st.integers(0, 2**16),
)
def test_first_argmax_is_argmax_with_ties_and_nan(
    rows: int, vocab: int, levels: int, nan_at: int | None, seed: int
) -> None:
    # Few distinct values, so rows have ties; argmax takes the first maximum, and a
    # NaN counts as the maximum.
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, levels, (rows, vocab), generator=gen).float()
    if nan_at is not None:
        values.view(-1)[nan_at % values.numel()] = float("nan")
    assert torch.equal(first_argmax(values), values.argmax(dim=-1))
