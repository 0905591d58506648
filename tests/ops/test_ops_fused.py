"""The fused element-wise ops (rms_norm, fused_add_rms_norm, silu_and_mul, gelu_tanh,
rotary_embedding) against the plain-torch reference, and their input checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import ops
from corral.ops import reference
from tests.ops.paged_cases import DEVICES, DTYPES, TOLERANCES

# One storage rounding apart at most: float32 math that sums in another order
# can land on the other side of a bfloat16 / float16 rounding boundary.
FUSED_TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: TOLERANCES[torch.bfloat16],
    torch.float16: TOLERANCES[torch.float16],
}

dtypes = st.sampled_from(DTYPES)
# Widths around the vector sizes (8 and 16 floats) exercise the scalar tails.
widths = st.one_of(st.integers(1, 40), st.sampled_from([64, 127, 128, 256, 1000]))


def randn(*shape: int, dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 2).to(dtype).to(device)


@st.composite
def row_inputs(draw: st.DrawFn, device: str) -> tuple[torch.Tensor, float]:
    """An input [..., width]: contiguous, a [tokens, heads, width] view with a
    token stride wider than the heads (a slice of a fused projection), or 1-D."""
    dtype = draw(dtypes)
    width = draw(widths)
    tokens = draw(st.integers(0, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(["contiguous", "strided", "vector"]))
    if layout == "vector":
        x = randn(width, dtype=dtype, device=device, seed=seed)
    elif layout == "contiguous":
        x = randn(tokens, width, dtype=dtype, device=device, seed=seed)
    else:
        heads = draw(st.integers(1, 3))
        fused = randn(tokens, heads + 2, width, dtype=dtype, device=device, seed=seed)
        x = fused[:, 1 : 1 + heads]
    return x, draw(st.sampled_from([1e-6, 1e-5, 0.1]))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_rms_norm_matches_reference(device: str, data: st.DataObject) -> None:
    x, eps = data.draw(row_inputs(device))
    weight = randn(x.shape[-1], dtype=x.dtype, device=device, seed=1)
    out = torch.full_like(x, float("nan"))
    expected = torch.empty_like(x)

    ops.rms_norm(out, x, weight, eps)
    reference.rms_norm(expected, x, weight, eps)

    torch.testing.assert_close(out, expected, **FUSED_TOLERANCES[x.dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_may_write_over_its_input(device: str, dtype: torch.dtype) -> None:
    x = randn(5, 96, dtype=dtype, device=device, seed=2)
    weight = randn(96, dtype=dtype, device=device, seed=3)
    expected = torch.empty_like(x)
    reference.rms_norm(expected, x, weight, 1e-6)

    ops.rms_norm(x, x, weight, 1e-6)

    torch.testing.assert_close(x, expected, **FUSED_TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fused_add_rms_norm_stores_the_exact_sum_and_normalizes_it(
    device: str, data: st.DataObject
) -> None:
    x, eps = data.draw(row_inputs(device))
    residual = randn(*x.shape, dtype=x.dtype, device=device, seed=4)
    weight = randn(x.shape[-1], dtype=x.dtype, device=device, seed=5)
    expected_x, expected_residual = x.clone(), residual.clone()

    ops.fused_add_rms_norm(x, residual, weight, eps)
    reference.fused_add_rms_norm(expected_x, expected_residual, weight, eps)

    assert torch.equal(residual, expected_residual)
    torch.testing.assert_close(x, expected_x, **FUSED_TOLERANCES[x.dtype])


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(
    dtype=dtypes,
    tokens=st.integers(0, 9),
    d=widths,
    seed=st.integers(0, 2**31 - 1),
    pad=st.integers(0, 3),
)
def test_silu_and_mul_matches_reference(
    device: str, dtype: torch.dtype, tokens: int, d: int, seed: int, pad: int
) -> None:
    # `pad` extra columns make the rows strided, as a slice of a wider buffer.
    x = randn(tokens, 2 * d + pad, dtype=dtype, device=device, seed=seed)[:, : 2 * d]
    out = torch.full((tokens, d), float("nan"), dtype=dtype, device=device)
    expected = torch.empty_like(out)

    ops.silu_and_mul(out, x)
    reference.silu_and_mul(expected, x)

    torch.testing.assert_close(out, expected, **FUSED_TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gelu_tanh_matches_reference(device: str, data: st.DataObject) -> None:
    x, _ = data.draw(row_inputs(device))
    out = torch.full_like(x, float("nan"))
    expected = torch.empty_like(x)

    ops.gelu_tanh(out, x)
    reference.gelu_tanh(expected, x)

    torch.testing.assert_close(out, expected, **FUSED_TOLERANCES[x.dtype])


def cos_sin_cache(max_position: int, rot_dim: int, dtype: torch.dtype) -> torch.Tensor:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_position).float(), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("is_neox", [True, False])
@settings(max_examples=40, deadline=None)
@given(
    dtype=dtypes,
    tokens=st.integers(0, 9),
    num_heads=st.integers(1, 4),
    num_kv_heads=st.integers(1, 2),
    head_size=st.sampled_from([2, 8, 18, 64, 128]),
    rot_fraction=st.sampled_from([1.0, 0.5, 0.25]),
    cache_in_float32=st.booleans(),
    as_3d=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotary_embedding_matches_reference(
    device: str,
    is_neox: bool,
    dtype: torch.dtype,
    tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    rot_fraction: float,
    cache_in_float32: bool,
    as_3d: bool,
    seed: int,
) -> None:
    rot_dim = max(2, int(head_size * rot_fraction) // 2 * 2)
    table = cos_sin_cache(64, rot_dim, torch.float32 if cache_in_float32 else dtype).to(device)
    positions = torch.randint(0, 64, (tokens,), generator=torch.Generator().manual_seed(seed))
    positions = positions.to(device)
    # Query and key are views of one fused qkv projection, as in the models.
    q_size, kv_size = num_heads * head_size, num_kv_heads * head_size
    qkv = randn(tokens, q_size + 2 * kv_size, dtype=dtype, device=device, seed=seed)
    query, key = qkv[:, :q_size], qkv[:, q_size : q_size + kv_size]
    if as_3d:
        query = query.view(tokens, num_heads, head_size)
        key = key.view(tokens, num_kv_heads, head_size)
    expected = qkv.clone()
    expected_q, expected_k = expected[:, :q_size], expected[:, q_size : q_size + kv_size]

    ops.rotary_embedding(positions, query, key, head_size, table, is_neox)
    reference.rotary_embedding(positions, expected_q, expected_k, head_size, table, is_neox)

    torch.testing.assert_close(qkv, expected, **FUSED_TOLERANCES[dtype])


def test_rotary_embedding_neox_turns_pairs_half_a_head_apart() -> None:
    # At angle pi/2 the pair (x_i, x_{i+half}) becomes (-x_{i+half}, x_i).
    table = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    query = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    key = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ops.rotary_embedding(torch.zeros(1, dtype=torch.int64), query, key, 4, table, True)
    assert query.tolist() == [[-3.0, -4.0, 1.0, 2.0]]
    key_gptj = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ops.rotary_embedding(torch.zeros(1, dtype=torch.int64), key, key_gptj, 4, table, False)
    assert key_gptj.tolist() == [[-2.0, 1.0, -4.0, 3.0]]


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# Rows enough that the CPU kernels split them into several tasks (a task holds at
# least 131072 written elements: a prefill chunk's rows, never a decode step's).
@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [64, 700])
def test_fused_ops_match_reference_on_prefill_sized_batches(
    dtype: torch.dtype, tokens: int
) -> None:
    tol = FUSED_TOLERANCES[dtype]
    hidden, inter, heads, kv_heads, head = 512, 1408, 8, 4, 64
    x = randn(tokens, hidden, dtype=dtype, device="cpu", seed=1)
    residual = randn(tokens, hidden, dtype=dtype, device="cpu", seed=2)
    weight = randn(hidden, dtype=dtype, device="cpu", seed=3)
    out, expected = torch.empty_like(x), torch.empty_like(x)
    ops.rms_norm(out, x, weight, 1e-6)
    reference.rms_norm(expected, x, weight, 1e-6)
    torch.testing.assert_close(out, expected, **tol)

    y, y_ref, r_ref = x.clone(), x.clone(), residual.clone()
    ops.fused_add_rms_norm(y, residual, weight, 1e-6)
    reference.fused_add_rms_norm(y_ref, r_ref, weight, 1e-6)
    assert torch.equal(residual, r_ref)
    torch.testing.assert_close(y, y_ref, **tol)

    gate_up = randn(tokens, 2 * inter, dtype=dtype, device="cpu", seed=4)
    act, act_ref = (torch.empty(tokens, inter, dtype=dtype) for _ in range(2))
    ops.silu_and_mul(act, gate_up)
    reference.silu_and_mul(act_ref, gate_up)
    torch.testing.assert_close(act, act_ref, **tol)

    qkv = randn(tokens, (heads + 2 * kv_heads) * head, dtype=dtype, device="cpu", seed=5)
    expected_qkv = qkv.clone()
    positions = torch.randint(0, 1024, (tokens,), generator=torch.Generator().manual_seed(6))
    table = cos_sin_cache(1024, head, torch.float32)
    q_end, k_end = heads * head, (heads + kv_heads) * head
    ops.rotary_embedding(positions, qkv[:, :q_end], qkv[:, q_end:k_end], head, table, True)
    reference.rotary_embedding(
        positions, expected_qkv[:, :q_end], expected_qkv[:, q_end:k_end], head, table, True
    )
    torch.testing.assert_close(qkv, expected_qkv, **tol)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 6),
    vocab=st.one_of(st.integers(1, 40), st.sampled_from([1000, 32000])),
    scale=st.sampled_from([1.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_token_logprobs_match_log_softmax(
    device: str, rows: int, vocab: int, scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab + 3, generator=gen) * scale)[:, :vocab].to(device)
    token_ids = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    out = torch.full((rows,), float("nan"), device=device)
    expected = torch.empty_like(out)

    ops.token_logprobs(out, logits, token_ids)
    reference.token_logprobs(expected, logits, token_ids)

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5),
    vocab=st.one_of(st.integers(1, 300), st.sampled_from([1000, 32000])),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    ties=st.booleans(),
    nan_at=st.none() | st.integers(0, 299),
    seed=st.integers(0, 2**31 - 1),
)
def test_greedy_sample_matches_max_and_log_softmax(
    device: str,
    rows: int,
    vocab: int,
    dtype: torch.dtype,
    ties: bool,
    nan_at: int | None,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab + 3, generator=gen) * 4)[:, :vocab]
    if ties:
        # Few distinct values: the maximum repeats, and the first one must win.
        logits = logits.round().clamp(-2, 2)
    if nan_at is not None:
        logits[-1, nan_at % vocab] = float("nan")
    logits = logits.to(dtype).to(device)
    token_ids = torch.full((rows,), -1, dtype=torch.int64, device=device)
    logprobs = torch.full((rows,), 7.0, device=device)
    expected_ids = torch.empty_like(token_ids)
    expected = torch.empty_like(logprobs)

    ops.greedy_sample(token_ids, logprobs, logits)
    reference.greedy_sample(expected_ids, expected, logits)

    assert torch.equal(token_ids, expected_ids)
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5, equal_nan=True)


def _norm_args() -> dict:
    return {
        "out": torch.empty(3, 8),
        "input": torch.randn(3, 8),
        "weight": torch.ones(8),
        "epsilon": 1e-6,
    }


def _rotary_args() -> dict:
    return {
        "positions": torch.tensor([0, 3], dtype=torch.int64),
        "query": torch.randn(2, 4, 8),
        "key": torch.randn(2, 2, 8),
        "head_size": 8,
        "cos_sin_cache": cos_sin_cache(4, 8, torch.float32),
        "is_neox": True,
    }


BAD_CALLS: list[tuple[str, Callable[[], None], str]] = [
    (
        "rms_norm dtype",
        lambda: ops.rms_norm(**{**_norm_args(), "weight": torch.ones(8, dtype=torch.bfloat16)}),
        "must share one dtype",
    ),
    (
        "rms_norm integer input",
        lambda: ops.rms_norm(
            torch.empty(3, 8, dtype=torch.int32),
            torch.ones(3, 8, dtype=torch.int32),
            torch.ones(8, dtype=torch.int32),
            1e-6,
        ),
        "dtype must be float32, bfloat16 or float16",
    ),
    (
        "rms_norm weight shape",
        lambda: ops.rms_norm(**{**_norm_args(), "weight": torch.ones(7)}),
        r"weight must be \[hidden_size\]",
    ),
    (
        "rms_norm out shape",
        lambda: ops.rms_norm(**{**_norm_args(), "out": torch.empty(3, 9)}),
        "differs from input shape",
    ),
    (
        "rms_norm strided last dimension",
        lambda: ops.rms_norm(**{**_norm_args(), "input": torch.randn(3, 16)[:, ::2]}),
        "contiguous in its last dimension",
    ),
    (
        "rms_norm negative epsilon",
        lambda: ops.rms_norm(**{**_norm_args(), "epsilon": -1.0}),
        "epsilon must be non-negative",
    ),
    (
        "fused_add_rms_norm aliasing",
        lambda: (lambda x: ops.fused_add_rms_norm(x, x, torch.ones(8), 1e-6))(torch.randn(3, 8)),
        "must be different tensors",
    ),
    (
        "fused_add_rms_norm residual shape",
        lambda: ops.fused_add_rms_norm(torch.randn(3, 8), torch.randn(2, 8), torch.ones(8), 1e-6),
        "differs from input shape",
    ),
    (
        "silu_and_mul odd width",
        lambda: ops.silu_and_mul(torch.empty(3, 3), torch.randn(3, 7)),
        r"input must be \[\.\.\., 2 \* d\]",
    ),
    (
        "silu_and_mul out shape",
        lambda: ops.silu_and_mul(torch.empty(3, 8), torch.randn(3, 8)),
        "out must be",
    ),
    (
        "gelu_tanh dtype",
        lambda: ops.gelu_tanh(torch.empty(3, 8, dtype=torch.bfloat16), torch.randn(3, 8)),
        "differs from input dtype",
    ),
    (
        "rotary position out of range",
        lambda: ops.rotary_embedding(
            **{**_rotary_args(), "positions": torch.tensor([0, 4], dtype=torch.int64)}
        ),
        r"positions\[1\] = 4 is outside",
    ),
    (
        "rotary negative position",
        lambda: ops.rotary_embedding(
            **{**_rotary_args(), "positions": torch.tensor([-1, 0], dtype=torch.int64)}
        ),
        r"positions\[0\] = -1 is outside",
    ),
    (
        "rotary int32 positions",
        lambda: ops.rotary_embedding(
            **{**_rotary_args(), "positions": torch.tensor([0, 1], dtype=torch.int32)}
        ),
        "positions must be int64",
    ),
    (
        "rotary token count",
        lambda: ops.rotary_embedding(**{**_rotary_args(), "key": torch.randn(3, 2, 8)}),
        "key has 3 tokens but positions has 2",
    ),
    (
        "rotary head size",
        lambda: ops.rotary_embedding(**{**_rotary_args(), "query": torch.randn(2, 4, 6)}),
        "head size 6 differs from head_size 8",
    ),
    (
        "rotary rot_dim too wide",
        lambda: ops.rotary_embedding(
            **{**_rotary_args(), "cos_sin_cache": cos_sin_cache(4, 16, torch.float32)}
        ),
        "at most head_size",
    ),
    (
        "rotary cache dtype",
        lambda: ops.rotary_embedding(
            **{**_rotary_args(), "cos_sin_cache": cos_sin_cache(4, 8, torch.float64)}
        ),
        "cos_sin_cache must be float32 or the query's dtype",
    ),
    (
        "token_logprobs token out of range",
        lambda: ops.token_logprobs(torch.empty(2), torch.randn(2, 5), torch.tensor([0, 5])),
        r"token_ids\[1\] = 5 is outside the vocabulary of 5",
    ),
    (
        "token_logprobs bfloat16 logits",
        lambda: ops.token_logprobs(
            torch.empty(2), torch.randn(2, 5, dtype=torch.bfloat16), torch.tensor([0, 1])
        ),
        "logits and out must be float32",
    ),
    (
        "greedy_sample int32 token ids",
        lambda: ops.greedy_sample(
            torch.empty(2, dtype=torch.int32), torch.empty(2), torch.randn(2, 5)
        ),
        r"token_ids must be a contiguous int64 \[rows\] = \[2\]",
    ),
    (
        "greedy_sample rows",
        lambda: ops.greedy_sample(
            torch.empty(2, dtype=torch.int64), torch.empty(3), torch.randn(2, 5)
        ),
        r"logprobs must be a contiguous float32 \[rows\] = \[2\]",
    ),
    (
        "token_logprobs rows",
        lambda: ops.token_logprobs(torch.empty(3), torch.randn(2, 5), torch.tensor([0, 1])),
        r"out must be a contiguous \[rows\] = \[2\]",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_raises_a_clear_error(call: Callable[[], None], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()


def test_bad_rotary_position_leaves_query_and_key_unchanged() -> None:
    args = _rotary_args()
    args["positions"] = torch.tensor([0, 9], dtype=torch.int64)
    before = (args["query"].clone(), args["key"].clone())
    with pytest.raises(RuntimeError):
        ops.rotary_embedding(**args)
    assert torch.equal(args["query"], before[0]) and torch.equal(args["key"], before[1])
