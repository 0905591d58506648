"""`validate_request`: the one place that decides whether a request can be served.

Pure (no engine state): the core calls it on every ``add_request``, and the front
doors call it first, so that a caller hears about a bad request in the call that
made it rather than at a later step.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.config import CoreConfig
from corral.sampling_params import SamplingParams


def check_sampling_params(params: object) -> SamplingParams:
    """``params`` itself when it is a `SamplingParams` (front doors call this before
    reading its fields to tokenize).

    Raises:
        ValueError: it is something else.
    """
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
    return params


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
            prompt or negative token ids, ``prefix_pos`` outside the prompt, stop
            strings without a detokenizer, token ids of ``logit_bias``,
            ``allowed_token_ids`` or the bad words outside the vocabulary (when
            ``config.vocab_size`` is known; negative ones always), bad words not
            tokenized, or ``truncate_prompt_tokens`` above ``max_model_len`` or not
            applied to the prompt.
    """
    check_sampling_params(params)
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
    _validate_token_constraints(config, num_tokens, params)
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


def _validate_token_constraints(
    config: CoreConfig, num_tokens: int, params: SamplingParams
) -> None:
    """The checks of the fields that name token ids or cut the prompt (vLLM's messages)."""
    vocab_size = config.vocab_size
    # Negative ids would index the logits from the end: refused even without a vocabulary.
    limit = vocab_size if vocab_size is not None else float("inf")
    if params.logit_bias:
        invalid = [t for t in params.logit_bias if not 0 <= t < limit]
        if invalid:
            raise ValueError(
                f"token_id(s) {invalid} in logit_bias contain out-of-vocab token ids. "
                f"Vocabulary size: {vocab_size}"
            )
    if params.allowed_token_ids is not None:
        invalid = [t for t in params.allowed_token_ids if not 0 <= t < limit]
        if invalid:
            raise ValueError(
                f"allowed_token_ids contains out-of-vocab token id! ({invalid}; "
                f"vocabulary size: {vocab_size})"
            )
    if params.bad_words:
        bad_words_token_ids = params.bad_words_token_ids
        if bad_words_token_ids is None:
            raise ValueError(
                "sampling_params.bad_words: the words have not been tokenized; the front "
                "doors do it (corral.tokenization.bind_bad_words)"
            )
        invalid = [t for ids in bad_words_token_ids for t in ids if not 0 <= t < limit]
        if invalid:
            raise ValueError(
                f"The model vocabulary size is {vocab_size}, but the following tokens were "
                f"specified as bad: {invalid}. All token id values should be integers "
                f"satisfying: 0 <= token_id < {vocab_size}."
            )
    truncate = params.truncate_prompt_tokens
    if truncate is not None:
        if truncate > config.max_model_len:
            raise ValueError(
                f"truncate_prompt_tokens value ({truncate}) is greater than max_model_len "
                f"({config.max_model_len}). Please, select a smaller truncation size."
            )
        keep = config.max_model_len if truncate == -1 else truncate
        if num_tokens > keep:
            raise ValueError(
                f"prompt: {num_tokens} tokens, more than truncate_prompt_tokens={truncate} "
                "keeps: truncate it first (corral.tokenization.truncate_prompt)"
            )
