"""Test helpers for the native ops: devices, tolerances, random paged KV batches.

Shared by the CPU op tests and the CUDA op tests (``tests/ops/test_cuda_ops.py``):
every builder takes a ``device`` and works the same on "cpu" and "cuda".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs
import torch
from hypothesis import strategies as st

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_SIZES = [64, 80, 96, 128, 256]
BLOCK_SIZES = [8, 16, 32]
GQA_GROUPS = [1, 2, 4, 8]

# Both sides compute in float32 and round once to the storage dtype, so the gap
# is about one unit in the last place of the output dtype (outputs are O(1)).
TOLERANCES = {
    torch.float32: {"atol": 2e-5, "rtol": 1e-4},
    torch.bfloat16: {"atol": 2e-2, "rtol": 1e-2},
    torch.float16: {"atol": 3e-3, "rtol": 2e-3},
}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block.

    The reference issues hundreds of tiny ops; on a busy machine each parallel
    region waits for descheduled pool threads (measured: 7 ms instead of 12 us
    for a 100 KB copy), so the reference runs serially.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@attrs.frozen
class BatchSpec:
    """Shapes of one paged_attention call; tensors come from :func:`make_batch`."""

    seq_lens: tuple[int, ...]
    q_lens: tuple[int, ...]
    num_kv_heads: int
    group: int
    head_size: int
    block_size: int
    dtype: torch.dtype
    sliding_window: int
    seed: int
    # The caches' dtype when it differs from the query's (a float8 KV cache).
    cache_dtype: torch.dtype | None = None

    @property
    def num_heads(self) -> int:
        return self.num_kv_heads * self.group


@attrs.frozen
class PagedBatch:
    """Inputs of one paged_attention call over a randomly laid out cache."""

    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    scale: float
    sliding_window: int

    def args(self, out: torch.Tensor) -> tuple:
        """Positional arguments of ``paged_attention`` writing into ``out``."""
        return (
            out,
            self.query,
            self.key_cache,
            self.value_cache,
            self.query_start_loc,
            self.seq_lens,
            self.block_tables,
            self.scale,
            self.sliding_window,
        )


def make_batch(spec: BatchSpec, device: str | torch.device = "cpu") -> PagedBatch:
    """Random queries and cache contents; each sequence's blocks are a random,
    non-contiguous choice from a pool with spare blocks, and block-table entries
    past a sequence's last block hold garbage (-1 or huge ids) the op must ignore."""
    gen = torch.Generator().manual_seed(spec.seed)
    bs = spec.block_size
    needed = [-(-n // bs) for n in spec.seq_lens]
    num_blocks = sum(needed) + 3
    max_blocks = max(needed) + 1
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.randint(-5, 1 << 30, (len(spec.seq_lens), max_blocks), generator=gen)
    used = 0
    for s, n in enumerate(needed):
        tables[s, :n] = order[used : used + n]
        used += n
    cache_shape = (num_blocks, bs, spec.num_kv_heads, spec.head_size)
    cache_dtype = spec.cache_dtype or spec.dtype
    key_cache = torch.randn(cache_shape, generator=gen).to(cache_dtype)
    value_cache = torch.randn(cache_shape, generator=gen).to(cache_dtype)
    num_tokens = sum(spec.q_lens)
    query = torch.randn((num_tokens, spec.num_heads, spec.head_size), generator=gen)
    starts = [0]
    for q_len in spec.q_lens:
        starts.append(starts[-1] + q_len)
    return PagedBatch(
        query=query.to(spec.dtype).to(device),
        key_cache=key_cache.to(device),
        value_cache=value_cache.to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(spec.seq_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(torch.int32).to(device),
        scale=spec.head_size**-0.5,
        sliding_window=spec.sliding_window,
    )


@st.composite
def seq_shapes(draw: st.DrawFn, block_size: int, max_len: int) -> tuple[int, int]:
    """(seq_len, q_len) of one sequence: a decode step or a prefill chunk, with
    lengths biased to 1 and to block boundaries (k * block_size + {-1, 0, 1})."""
    boundary = st.builds(
        lambda k, d: max(1, k * block_size + d),
        st.integers(1, max(1, max_len // block_size)),
        st.sampled_from([-1, 0, 1]),
    )
    seq_len = draw(st.one_of(st.just(1), boundary, st.integers(1, max_len)))
    if draw(st.booleans()):
        return seq_len, 1
    return seq_len, draw(st.one_of(st.just(seq_len), st.integers(1, seq_len)))


@st.composite
def batch_specs(draw: st.DrawFn, max_seqs: int = 16, max_len: int = 300) -> BatchSpec:
    """Any mix of decode and prefill sequences over every supported shape and dtype."""
    block_size = draw(st.sampled_from(BLOCK_SIZES))
    shapes = draw(st.lists(seq_shapes(block_size, max_len), min_size=1, max_size=max_seqs))
    windowed = draw(st.booleans())
    return BatchSpec(
        seq_lens=tuple(s for s, _ in shapes),
        q_lens=tuple(q for _, q in shapes),
        num_kv_heads=draw(st.integers(1, 3)),
        group=draw(st.sampled_from(GQA_GROUPS)),
        head_size=draw(st.sampled_from(HEAD_SIZES)),
        block_size=block_size,
        dtype=draw(st.sampled_from(DTYPES)),
        sliding_window=draw(st.integers(1, max_len)) if windowed else -1,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def check_against_reference(spec: BatchSpec, device: str = "cpu") -> None:
    """paged_attention on :func:`make_batch` (spec) equals the float32 reference."""
    from corral import ops
    from corral.ops import reference

    batch = make_batch(spec, device)
    out = torch.full_like(batch.query, float("nan"))
    ops.paged_attention(*batch.args(out))
    expected = torch.empty_like(batch.query)
    with one_thread():
        reference.paged_attention(*batch.args(expected))
    torch.testing.assert_close(out.float(), expected.float(), **TOLERANCES[spec.dtype])
