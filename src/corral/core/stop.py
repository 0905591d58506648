"""Stop conditions of a sequence after it received a token, in vLLM's order."""

from __future__ import annotations

from corral.core.sequence import Sequence


def check_stop(
    seq: Sequence, token_id: int, new_text: str, eos_token_ids: frozenset[int], max_model_len: int
) -> None:
    """Set ``seq.finish_reason`` / ``stop_reason`` (and trim its text) if it must stop.

    Order: below ``min_tokens`` only the length limits apply; then EOS (unless
    ``ignore_eos``), ``stop_token_ids``, stop strings, ``max_tokens`` and the context
    length. The text of a stopping EOS or stop token is dropped, and a matched stop
    string is cut off, unless ``include_stop_str_in_output``.
    """
    params = seq.params
    num_output_tokens = len(seq.token_ids) - seq.num_prompt_tokens
    if num_output_tokens >= params.min_tokens:
        keep = params.include_stop_str_in_output
        if token_id in eos_token_ids and not params.ignore_eos:
            if new_text and not keep:
                seq.output_text = seq.output_text[: -len(new_text)]
            seq.finish_reason = "stop"
            return
        if token_id in params.stop_token_ids:
            if new_text and not keep:
                seq.output_text = seq.output_text[: -len(new_text)]
            seq.finish_reason = "stop"
            seq.stop_reason = token_id
            return
        if params.stop and new_text and _check_stop_strings(seq, len(new_text)):
            return
    if params.max_tokens is not None and num_output_tokens >= params.max_tokens:
        seq.finish_reason = "length"
    elif len(seq.token_ids) > max_model_len:
        seq.finish_reason = "length"


def _check_stop_strings(seq: Sequence, num_new_chars: int) -> bool:
    text = seq.output_text
    for stop in seq.params.stop:
        # Only a match that overlaps the new text can be new.
        index = text.find(stop, max(0, len(text) - num_new_chars - len(stop)))
        if index == -1:
            continue
        if seq.params.include_stop_str_in_output:
            index += len(stop)
        seq.output_text = text[:index]
        seq.finish_reason = "stop"
        seq.stop_reason = stop
        return True
    return False
