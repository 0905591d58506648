"""The native add_lora op against its reference, and its input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import ops
from corral.ops import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@st.composite
def lora_cases(draw: st.DrawFn) -> dict[str, object]:
    num_tokens = draw(st.integers(0, 40))
    in_features = draw(st.integers(1, 70))
    slices = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    max_loras = draw(st.integers(1, 5))
    rank = draw(st.integers(1, 16))
    slots = draw(st.lists(st.integers(-1, max_loras - 1), min_size=num_tokens, max_size=num_tokens))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    return {
        "num_tokens": num_tokens,
        "in_features": in_features,
        "slices": slices,
        "max_loras": max_loras,
        "rank": rank,
        "slots": slots,
        "dtype": dtype,
        "seed": seed,
        "out_stride_pad": draw(st.integers(0, 3)),
    }


@settings(max_examples=80, deadline=None)
@given(lora_cases())
def test_add_lora_matches_reference(case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = case["dtype"]
    n_out = sum(case["slices"])
    x = torch.randn(case["num_tokens"], case["in_features"], generator=gen).to(dtype)
    a = torch.randn(
        case["max_loras"], len(case["slices"]) * case["rank"], case["in_features"], generator=gen
    ).to(dtype)
    b = (torch.randn(case["max_loras"], case["rank"], n_out, generator=gen) * 0.1).to(dtype)
    slots = torch.tensor(case["slots"], dtype=torch.int64)
    # A view with a row stride wider than its width, as a slice of a fused output.
    wide = torch.randn(case["num_tokens"], n_out + case["out_stride_pad"], generator=gen)
    out = wide.to(dtype)[:, :n_out]
    expected = out.clone()
    reference.add_lora(expected, x, a, b, slots, case["slices"])
    ops.add_lora(out, x, a, b, slots, case["slices"])
    scale = expected.float().abs().amax().item() + 1.0 if expected.numel() else 1.0
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=TOLERANCE[dtype] * scale)
    base_rows = slots < 0
    assert torch.equal(out[base_rows], wide.to(dtype)[:, :n_out][base_rows])


def make(num_tokens: int = 4, max_loras: int = 2) -> tuple[torch.Tensor, ...]:
    x = torch.randn(num_tokens, 8)
    a = torch.randn(max_loras, 2 * 4, 8)
    b = torch.randn(max_loras, 4, 10)
    out = torch.zeros(num_tokens, 10)
    return out, x, a, b


@pytest.mark.parametrize("bad_slot", [2, 7, -2, 2**40])
def test_add_lora_rejects_bad_slots_without_touching_out(bad_slot: int) -> None:
    out, x, a, b = make()
    slots = torch.tensor([0, 1, bad_slot, -1])
    with pytest.raises(RuntimeError, match=r"token_slots\[2\] .* outside \[-1, max_loras=2\)"):
        ops.add_lora(out, x, a, b, slots, [6, 4])
    assert not out.any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"slices": [5, 4]}, "sum to 9"),
        ({"slices": [10]}, "lora_a must be"),
        ({"slots": torch.zeros(4, dtype=torch.int32)}, "int64"),
        ({"slots": torch.zeros(3, dtype=torch.int64)}, "token_slots must be"),
        ({"x": torch.randn(4, 9)}, "lora_a must be"),
        ({"b": torch.randn(2, 4, 11)}, "lora_b must be"),
        ({"a": torch.randn(2, 8, 8, dtype=torch.float64)}, "dtype"),
        ({"slices": [6, 0, 4]}, "positive"),
    ],
)
def test_add_lora_checks_its_inputs(change: dict, message: str) -> None:
    out, x, a, b = make()
    args = {"x": x, "a": a, "b": b, "slots": torch.zeros(4, dtype=torch.int64), "slices": [6, 4]}
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        ops.add_lora(out, args["x"], args["a"], args["b"], args["slots"], args["slices"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["one_run", "interleaved"])
def test_long_segments_take_the_gemm_path_and_match(dtype: torch.dtype, layout: str) -> None:
    # 48 tokens of one slot: a segment long enough for the GEMM path, either as one run of
    # consecutive tokens (a prefill chunk: views) or interleaved with others (gathered).
    gen = torch.Generator().manual_seed(7)
    num_tokens, in_features, slices, rank = 96, 64, [48, 16, 16], 8
    x = torch.randn(num_tokens, in_features, generator=gen).to(dtype)
    a = torch.randn(3, len(slices) * rank, in_features, generator=gen).to(dtype)
    b = (torch.randn(3, rank, sum(slices), generator=gen) * 0.1).to(dtype)
    if layout == "one_run":
        slots = torch.tensor([-1] * 24 + [1] * 48 + [2] * 24)
    else:
        slots = torch.tensor([1, -1] * 48)
    out = torch.randn(num_tokens, sum(slices), generator=gen).to(dtype)
    expected = out.clone()
    reference.add_lora(expected, x, a, b, slots, slices)
    ops.add_lora(out, x, a, b, slots, slices)
    scale = expected.float().abs().amax().item() + 1.0
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=TOLERANCE[dtype] * scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots_on", ["cpu", "cuda"])
def test_cuda_kernel_matches_reference(dtype: torch.dtype, slots_on: str) -> None:
    gen = torch.Generator().manual_seed(11)
    num_tokens, in_features, slices, rank = 70, 96, [64, 32, 32], 16
    x = torch.randn(num_tokens, in_features, generator=gen).to(dtype)
    a = torch.randn(4, len(slices) * rank, in_features, generator=gen).to(dtype)
    b = (torch.randn(4, rank, sum(slices), generator=gen) * 0.1).to(dtype)
    slots = torch.randint(-1, 4, (num_tokens,), generator=gen)
    out = torch.randn(num_tokens, sum(slices), generator=gen).to(dtype)
    expected = out.clone()
    reference.add_lora(expected, x, a, b, slots, slices)
    got = out.cuda()
    ops.add_lora(got, x.cuda(), a.cuda(), b.cuda(), slots.to(slots_on), slices)
    scale = expected.float().abs().amax().item() + 1.0
    torch.testing.assert_close(
        got.cpu().float(), expected.float(), rtol=0, atol=TOLERANCE[dtype] * scale
    )
    with pytest.raises(RuntimeError, match="outside"):
        ops.add_lora(got, x.cuda(), a.cuda(), b.cuda(), torch.full((num_tokens,), 4), slices)
