"""How a model is split over tensor-parallel ranks, checked without starting any rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from corral.distributed.tp_step import pack_step, unpack_step
from corral.model.layers.attention import AttentionMetadata
from corral.model.layers.parallel import HeadSplit, split_heads
from corral.model.loader import load_model
from corral.model.parallel_state import TensorParallelGroup
from corral.model.runner import ForwardStep
from corral.model.weights import CheckpointSlice
from tests.distributed.tp.conftest import TensorParallelZoo


def rank_of(rank: int, world_size: int) -> TensorParallelGroup:
    # Building and loading a shard runs no collective: a placeholder group suffices.
    return TensorParallelGroup(rank, world_size, process_group=object())


def rows(module: torch.nn.Module, shard: str) -> torch.Tensor:
    offset, size = module.shard_offsets[shard]
    return module.weight[offset : offset + size]


def test_query_heads_split_and_kv_heads_split_or_replicate() -> None:
    assert split_heads(4, 2, rank_of(1, 2)) == HeadSplit(2, 1, 2, 1)
    # MQA: the one KV head is on every rank.
    assert split_heads(2, 1, rank_of(0, 2)) == HeadSplit(1, 1, 0, 0)
    assert split_heads(2, 1, rank_of(1, 2)) == HeadSplit(1, 1, 1, 0)
    # 2 KV heads over 4 ranks: ranks 2 and 3 read KV head 1.
    assert split_heads(8, 2, rank_of(3, 4)) == HeadSplit(2, 1, 6, 1)


def test_heads_that_cannot_be_split_are_refused() -> None:
    with pytest.raises(ValueError, match="num_attention_heads: 3 is not divisible"):
        split_heads(3, 3, rank_of(0, 2))
    with pytest.raises(ValueError, match="not a multiple of the 3 key/value heads"):
        split_heads(12, 3, rank_of(0, 4))


def test_shards_put_together_are_the_checkpoint(tp_zoo: TensorParallelZoo) -> None:
    path = str(tp_zoo.path("llama-odd-vocab"))
    full, config = load_model(path, dtype="float32")
    shards = [load_model(path, dtype="float32", tp=rank_of(r, 2))[0] for r in range(2)]
    vocab = config.vocab_size
    assert vocab % 2 == 1
    weights = [dict(s.named_parameters()) for s in shards]
    embed = torch.cat([w["model.embed_tokens.weight"] for w in weights])
    assert torch.equal(embed[:vocab], full.model.embed_tokens.weight)
    assert not embed[vocab:].any(), "padding rows are zero"
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    assert torch.equal(
        torch.cat([w[o_proj] for w in weights], dim=1), dict(full.named_parameters())[o_proj]
    )
    qkv = [s.model.layers[1].self_attn.qkv_proj for s in shards]
    full_qkv = full.model.layers[1].self_attn.qkv_proj
    for shard in ("q", "k", "v"):
        assert torch.equal(torch.cat([rows(m, shard) for m in qkv]), rows(full_qkv, shard))
    assert qkv[0].shard_offsets == {"q": (0, 64), "k": (64, 32), "v": (96, 32)}


def test_mqa_shards_hold_the_same_kv_head(tp_zoo: TensorParallelZoo) -> None:
    path = str(tp_zoo.path("llama3-rope"))
    shards = [load_model(path, dtype="float32", tp=rank_of(r, 2)) for r in range(2)]
    assert [config.num_kv_heads for _, config in shards] == [1, 1]
    qkv = [m.model.layers[0].self_attn.qkv_proj for m, _ in shards]
    assert torch.equal(rows(qkv[0], "k"), rows(qkv[1], "k"))
    assert torch.equal(rows(qkv[0], "v"), rows(qkv[1], "v"))
    assert not torch.equal(rows(qkv[0], "q"), rows(qkv[1], "q"))


def test_gpt2_fused_c_attn_takes_each_ranks_heads_of_q_k_and_v(tp_zoo: TensorParallelZoo) -> None:
    path = str(tp_zoo.path("gpt2"))
    full = load_model(path, dtype="float32")[0].transformer.h[0].attn.c_attn.weight
    shard = load_model(path, dtype="float32", tp=rank_of(1, 2))[0].transformer.h[0].attn.c_attn
    hidden = full.shape[1]
    rows = [full[p * hidden + hidden // 2 : (p + 1) * hidden] for p in range(3)]
    assert torch.equal(shard.weight, torch.cat(rows))


def test_checkpoint_slices_read_only_the_selected_part(tmp_path: Path) -> None:
    from safetensors import safe_open

    tensor = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    save_file({"w": tensor}, tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        lazy = CheckpointSlice(f.get_slice("w"))
        assert lazy.shape == (4, 6)
        assert torch.equal(lazy.narrow(0, 1, 2).narrow(1, 3, 3).load(), tensor[1:3, 3:6])
        assert torch.equal(lazy.t().narrow(0, 2, 3).load(), tensor.t()[2:5])
        with pytest.raises(ValueError, match="outside"):
            lazy.narrow(1, 4, 3)


def test_a_packed_step_unpacks_to_the_same_step() -> None:
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor([5, 6, 40], dtype=torch.int64),
        query_start_loc=torch.tensor([0, 2, 3], dtype=torch.int32),
        seq_lens=torch.tensor([2, 9], dtype=torch.int32),
        block_tables=torch.tensor([[0, 0], [2, 3]], dtype=torch.int32),
    )
    step = ForwardStep(
        [(1, 0)],
        [],
        [(4, 5), (6, 7)],
        input_ids=torch.tensor([11, 12, 13]),
        positions=torch.tensor([0, 1, 8]),
        metadata=metadata,
        logit_rows=[1, 2],
    )
    back = unpack_step(pack_step(step), torch.device("cpu"))
    assert (back.blocks_to_swap_out, back.blocks_to_swap_in, back.blocks_to_copy) == (
        [(1, 0)],
        [],
        [(4, 5), (6, 7)],
    )
    assert back.logit_rows == [1, 2]
    assert back.input_ids is not None and back.positions is not None and back.metadata
    assert back.input_ids.tolist() == [11, 12, 13] and back.positions.tolist() == [0, 1, 8]
    for field in ("slot_mapping", "query_start_loc", "seq_lens", "block_tables"):
        got, want = getattr(back.metadata, field), getattr(metadata, field)
        assert got.dtype == want.dtype and torch.equal(got, want), field
    moves_only = unpack_step(pack_step(ForwardStep([], [(0, 3)], [])), torch.device("cpu"))
    assert moves_only.input_ids is None and moves_only.blocks_to_swap_in == [(0, 3)]
