"""`validate_request`: the one place that decides whether a request can be served.

Pure (no engine state): the core calls it on every ``add_request``, and the front
doors call it first, so that a caller hears about a bad request in the call that
made it rather than at a later step.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.config import CoreConfig
from corral.sampling_params import SamplingParams


def validate_request(
    config: CoreConfig,
    prompt_token_ids: Sequence[int],
    params: SamplingParams,
    prefix_pos: int | None = None,
    *,
    has_detokenizer: bool,
) -> str | None:
    """Check a request against the engine's configuration.

    Returns:
        None when the request can run; else why it never can (a prompt longer than
        ``max_model_len`` or than the whole KV cache, ``best_of`` above
        ``max_num_seqs``, a beam search whose beams cannot all fit in the cache). The front doors raise this message as a ValueError; the
        core accepts such a request and finishes it with finish_reason "abort".

    Raises:
        ValueError: a malformed request: ``params`` not a `SamplingParams`, an empty
            prompt or negative token ids, ``prefix_pos`` outside the prompt, or stop
            strings without a detokenizer.
    """
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
    num_tokens = len(prompt_token_ids)
    if not num_tokens:
        raise ValueError("prompt_token_ids must hold at least one token, got []")
    if min(prompt_token_ids) < 0:
        raise ValueError("prompt_token_ids must be non-negative token ids")
    if prefix_pos is not None and not 0 <= prefix_pos <= num_tokens:
        raise ValueError(
            f"prefix_pos must be in [0, {num_tokens}] (the prompt length), got {prefix_pos!r}"
        )
    if params.stop and not has_detokenizer:
        raise ValueError(
            "sampling_params.stop: stop strings need a detokenizer; this engine has none"
        )
    if num_tokens > config.max_model_len:
        return f"prompt: {num_tokens} tokens are longer than max_model_len={config.max_model_len}"
    if -(-num_tokens // config.block_size) > config.num_kv_blocks:
        return (
            f"prompt: {num_tokens} tokens need more KV blocks than the cache holds "
            f"({config.num_kv_blocks} blocks of {config.block_size} tokens)"
        )
    if params.best_of > config.max_num_seqs:
        return (
            f"sampling_params.best_of={params.best_of} exceeds max_num_seqs={config.max_num_seqs}"
        )
    if params.use_beam_search:
        return _beam_search_fits(config, num_tokens, params)
    return None


def _beam_search_fits(config: CoreConfig, num_tokens: int, params: SamplingParams) -> str | None:
    """A beam group advances in lock step, so all its beams must fit in the cache at
    once (counted without sharing, plus the admission watermark); otherwise a beam
    could wait forever for room its own siblings hold."""
    max_len = config.max_model_len + 1
    if params.max_tokens is not None:
        max_len = min(max_len, num_tokens + params.max_tokens)
    need = params.best_of * -(-max_len // config.block_size) + config.watermark_blocks
    if need > config.num_kv_blocks:
        return (
            f"beam search: {params.best_of} beams of up to {max_len} tokens need up to {need} "
            f"KV blocks; the cache holds {config.num_kv_blocks} blocks of "
            f"{config.block_size} tokens"
        )
    return None
