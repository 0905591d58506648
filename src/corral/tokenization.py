"""Tokenizer loading, prompt validation and incremental detokenization.

Generated text is produced token by token with ``tokenizers``' `DecodeStream`, which
holds back bytes that do not yet form complete UTF-8 characters. The concatenation
of what `Detokenizer.decode_next` returns, followed by `Detokenizer.flush` when the
sequence finishes, equals ``tokenizer.decode(output_ids, skip_special_tokens=...)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import attrs
from tokenizers.decoders import DecodeStream

from corral.sampling_params import SamplingParams


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    """The fast (Rust-backed) Hugging Face tokenizer of a local model folder.

    Raises:
        ValueError: when the folder has no tokenizer, or only a slow (Python) one,
            which incremental decoding does not support.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer: cannot load a tokenizer from {path!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer: {path!r} has no fast tokenizer (tokenizer.json) to stream with"
        )
    return tokenizer


def truncate_prompt(
    prompt_token_ids: Sequence[int], truncate_prompt_tokens: int | None, max_model_len: int
) -> list[int]:
    """The last ``truncate_prompt_tokens`` tokens of a prompt (-1: ``max_model_len``),
    as vLLM truncates; the whole prompt when None or when it is short enough."""
    ids = [int(t) for t in prompt_token_ids]
    if truncate_prompt_tokens is None:
        return ids
    keep = max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens
    return ids[-keep:] if len(ids) > keep else ids


def bind_bad_words(tokenizer: Any, params: SamplingParams) -> SamplingParams:
    """``params`` with its ``bad_words`` tokenized (vLLM's ``update_from_tokenizer``).

    Each word is tokenized without special tokens as it is (leading spaces stripped)
    and with one leading space, so that it is banned both at the start of the text
    and after a space; the spaced form is kept only when it has as many tokens as the
    plain one and a different first token (otherwise it is the same word, or a
    tokenizer that merges the space differently, and banning it would over-reach).

    Raises:
        ValueError: a word that tokenizes to nothing, or no tokenizer for bad words.
    """
    if not params.bad_words or params.bad_words_token_ids is not None:
        return params
    if tokenizer is None:
        raise ValueError("bad_words: tokenizing them needs a tokenizer; this engine has none")
    token_ids: list[tuple[int, ...]] = []
    for word in params.bad_words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        if not plain:
            raise ValueError(f"bad_words: {word!r} tokenizes to no token")
        token_ids.append(plain)
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            token_ids.append(spaced)
    return attrs.evolve(params, _bad_words_token_ids=tuple(token_ids))


def validate_prompt(
    prompt_token_ids: Sequence[int],
    *,
    vocab_size: int,
    max_model_len: int,
    truncate_prompt_tokens: int | None = None,
) -> list[int]:
    """Check a prompt's token ids against the model and return them as a list, cut to
    its last ``truncate_prompt_tokens`` tokens first (see `truncate_prompt`).

    The async engine and the offline `LLM` both call this before adding a request.

    Raises:
        ValueError: for an empty prompt, a token id outside ``[0, vocab_size)``, or a
            prompt longer than ``max_model_len``.
    """
    ids = truncate_prompt(prompt_token_ids, truncate_prompt_tokens, max_model_len)
    if not ids:
        raise ValueError("prompt: the prompt is empty (it needs at least one token)")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(
            f"prompt_token_ids: token id {bad} is outside the vocabulary [0, {vocab_size})"
        )
    if len(ids) > max_model_len:
        raise ValueError(f"prompt: {len(ids)} tokens exceed max_model_len={max_model_len}")
    return ids


def encode_prompt(
    tokenizer: Any,
    prompt: str | None,
    prompt_token_ids: Sequence[int] | None,
    *,
    vocab_size: int,
    max_model_len: int,
    truncate_prompt_tokens: int | None = None,
) -> list[int]:
    """Token ids of a request given as text or as ids (exactly one), validated (and
    truncated: see `validate_prompt`).

    Text is tokenized with the tokenizer's special tokens (e.g. BOS), as vLLM does.

    Raises:
        ValueError: when both or neither are given, or `validate_prompt` rejects the ids.
    """
    if (prompt is None) == (prompt_token_ids is None):
        raise ValueError("prompt: give exactly one of prompt and prompt_token_ids")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
        prompt_token_ids = tokenizer(prompt).input_ids
    assert prompt_token_ids is not None
    return validate_prompt(
        prompt_token_ids,
        vocab_size=vocab_size,
        max_model_len=max_model_len,
        truncate_prompt_tokens=truncate_prompt_tokens,
    )


@attrs.define
class DecodeState:
    """One sequence's decoding progress: the stream, its output ids and the text emitted so far."""

    stream: DecodeStream
    skip_special_tokens: bool
    output_ids: list[int] = attrs.field(factory=list)
    text: str = ""


class Detokenizer:
    """Incremental detokenizer over a fast HF tokenizer (`corral.core.interface.Detokenizer`).

    Args:
        tokenizer: A fast Hugging Face tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer

    def new_state(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> DecodeState:
        """Fresh state; the text covers the output only, so the prompt is not fed."""
        return DecodeState(
            stream=DecodeStream(skip_special_tokens=params.skip_special_tokens),
            skip_special_tokens=params.skip_special_tokens,
        )

    def fork_state(self, state: object) -> DecodeState:
        """An independent copy of ``state`` for a forked sample."""
        assert isinstance(state, DecodeState)
        return DecodeState(
            stream=copy.deepcopy(state.stream),
            skip_special_tokens=state.skip_special_tokens,
            output_ids=list(state.output_ids),
            text=state.text,
        )

    def decode_next(self, state: object, token_id: int) -> str:
        """Feed one generated token; return the text it completes ("" while bytes are pending)."""
        assert isinstance(state, DecodeState)
        state.output_ids.append(token_id)
        text = state.stream.step(self._backend, token_id) or ""
        state.text += text
        return text

    def flush(self, state: object) -> str:
        """Text still held back (an unfinished UTF-8 character) once no token will follow.

        Raises:
            RuntimeError: if the streamed text is not a prefix of the full decode,
                which would mean the stream and ``tokenizer.decode`` disagree.
        """
        assert isinstance(state, DecodeState)
        full = self.tokenizer.decode(
            state.output_ids, skip_special_tokens=state.skip_special_tokens
        )
        if not full.startswith(state.text):
            raise RuntimeError("detokenizer: streamed text is not a prefix of the full decode")
        tail = full[len(state.text) :]
        state.text = full
        return tail
