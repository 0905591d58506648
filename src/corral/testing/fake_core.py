"""`make_fake_core`: a ready `EngineCore` over a `FakeModelRunner`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.config import CoreConfig
from corral.core.engine_core import EngineCore
from corral.core.interface import Detokenizer
from corral.outputs import RequestOutput
from corral.testing.detokenizer import FakeDetokenizer
from corral.testing.fake_runner import FakeModelRunner

FAKE_EOS_TOKEN_ID = 0
"""The end-of-sequence token `make_fake_core` uses by default."""

_DEFAULT_DETOKENIZER: Any = object()

_SMALL: dict[str, Any] = {
    "block_size": 4,
    "num_kv_blocks": 64,
    "num_host_blocks": 32,
    "max_model_len": 128,
    "max_num_seqs": 16,
}


def make_fake_core(
    runner: FakeModelRunner | None = None,
    *,
    eos_token_ids: Iterable[int] = (FAKE_EOS_TOKEN_ID,),
    detokenizer: Detokenizer | None = _DEFAULT_DETOKENIZER,
    **core_config_overrides: Any,
) -> EngineCore:
    """An `EngineCore` with a small cache and a fake model, for tests.

    Args:
        runner: The fake model; by default one matching the config's geometry.
        eos_token_ids: End-of-sequence ids (by default token 0).
        detokenizer: By default a `FakeDetokenizer` that treats the EOS ids as
            special; pass None for an engine without text.
        **core_config_overrides: `CoreConfig` fields. Defaults: block_size 4, 64 device
            and 32 host blocks, max_model_len 128, max_num_seqs 16, and a budget of
            64 tokens (at least max_model_len without chunked prefill).

    Raises:
        ValueError: A given runner's block size differs from the config's.
    """
    values: dict[str, Any] = dict(_SMALL)
    values.update(core_config_overrides)
    if "max_num_batched_tokens" not in values:
        budget = max(64, int(values["max_num_seqs"]))
        if not values.get("enable_chunked_prefill", True):
            budget = max(budget, int(values["max_model_len"]))
        values["max_num_batched_tokens"] = budget
    config = CoreConfig(**values)
    if runner is None:
        runner = FakeModelRunner(
            block_size=config.block_size,
            num_kv_blocks=config.num_kv_blocks,
            num_host_blocks=config.num_host_blocks,
        )
    elif runner.block_size != config.block_size:
        raise ValueError(
            f"runner.block_size must equal the config's block_size={config.block_size}, "
            f"got {runner.block_size}"
        )
    eos = tuple(eos_token_ids)
    if detokenizer is _DEFAULT_DETOKENIZER:
        detokenizer = FakeDetokenizer(special_token_ids=eos)
    return EngineCore(config, runner, eos_token_ids=eos, detokenizer=detokenizer)


def run_to_completion(core: EngineCore, max_steps: int = 10_000) -> dict[str, RequestOutput]:
    """Step ``core`` until it is idle; return each request's final output by id.

    Raises:
        AssertionError: The core still had unfinished requests after ``max_steps``
            steps (a liveness failure), or a request finished twice.
    """
    final: dict[str, RequestOutput] = {}
    for _ in range(max_steps):
        if not core.has_unfinished_requests():
            return final
        for out in core.step():
            if out.finished:
                if out.request_id in final:
                    raise AssertionError(f"request {out.request_id!r} finished twice")
                final[out.request_id] = out
    raise AssertionError(f"requests still unfinished after {max_steps} steps: {core.stats()}")
