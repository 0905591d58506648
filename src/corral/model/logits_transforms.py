"""Batched transformations of next-token logits: token constraints, penalties and
truncation masks.

Each function takes float32 logits [rows, vocab] and per-row parameters. Penalties
and truncation return new logits, in which a row whose parameter is neutral comes
back unchanged. The token constraints (``allowed_token_ids``, bad words,
``logit_bias``) edit in place (their name ends in ``_``) and are given only the rows
that use them, so that a batch where no row does pays nothing for them. They run in the order vLLM uses: allowed tokens, bad
words, logit bias, penalties, temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mask_disallowed_(
    logits: torch.Tensor, rows: Sequence[int], allowed: Sequence[Sequence[int]]
) -> None:
    """Set every logit of row ``rows[i]`` to -inf except those of ``allowed[i]``."""
    device = logits.device
    keep = torch.zeros((len(rows), logits.shape[1]), dtype=torch.bool, device=device)
    flat_rows = [i for i, ids in enumerate(allowed) for _ in ids]
    flat_ids = [t for ids in allowed for t in ids]
    keep[torch.tensor(flat_rows, device=device), torch.tensor(flat_ids, device=device)] = True
    index = torch.tensor(rows, device=device)
    logits[index] = logits[index].masked_fill(~keep, float("-inf"))


def ban_tokens_(logits: torch.Tensor, rows: Sequence[int], token_ids: Sequence[int]) -> None:
    """Set ``logits[rows[i], token_ids[i]]`` to -inf for every i (one scatter)."""
    device = logits.device
    logits[torch.tensor(rows, device=device), torch.tensor(token_ids, device=device)] = float(
        "-inf"
    )


def add_logit_bias_(
    logits: torch.Tensor, rows: Sequence[int], token_ids: Sequence[int], bias: Sequence[float]
) -> None:
    """Add ``bias[i]`` to ``logits[rows[i], token_ids[i]]`` for every i (one scatter)."""
    device = logits.device
    logits.index_put_(
        (torch.tensor(rows, device=device), torch.tensor(token_ids, device=device)),
        torch.tensor(bias, dtype=logits.dtype, device=device),
        accumulate=True,
    )


def bad_word_bans(
    bad_words_token_ids: Sequence[Sequence[int]], output_ids: Sequence[int]
) -> list[int]:
    """The tokens a sequence may not take next: each bad word's last token, when the
    output so far ends with the word's other tokens (vLLM's rule; the prompt does
    not count)."""
    banned = []
    num_output = len(output_ids)
    for word in bad_words_token_ids:
        prefix_len = len(word) - 1
        if prefix_len > num_output:
            continue
        if prefix_len == 0 or list(output_ids[num_output - prefix_len :]) == list(word[:-1]):
            banned.append(word[-1])
    return banned


def token_counts(token_ids: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Occurrences of every vocabulary token in each row's list, as float32 [rows, vocab]."""
    longest = max((len(ids) for ids in token_ids), default=0)
    # Padding points at an extra column that is dropped, so rows of any length share one scatter.
    padded = torch.full((len(token_ids), max(longest, 1)), vocab_size, dtype=torch.int64)
    for row, ids in enumerate(token_ids):
        if ids:
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    counts = torch.zeros((len(token_ids), vocab_size + 1), dtype=torch.float32)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size].to(device)


def apply_penalties(
    logits: torch.Tensor,
    prompt_counts: torch.Tensor,
    output_counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Repetition, frequency and presence penalties (vLLM / OpenAI semantics).

    The repetition penalty (CTRL paper) divides positive and multiplies negative
    logits of every token seen in the prompt or the output; frequency and presence
    penalties subtract ``frequency * count + presence * (count > 0)`` over the output
    only.

    Args:
        logits: [rows, vocab] float32.
        prompt_counts: [rows, vocab] token counts of each row's prompt.
        output_counts: [rows, vocab] token counts of each row's output so far.
        repetition: [rows]; 1 is neutral.
        frequency: [rows]; 0 is neutral.
        presence: [rows]; 0 is neutral.
    """
    seen = (prompt_counts > 0) | (output_counts > 0)
    penalty = repetition.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    logits = torch.where(seen, penalized, logits)
    logits = logits - frequency.unsqueeze(1) * output_counts
    return logits - presence.unsqueeze(1) * (output_counts > 0).to(logits.dtype)


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Keep each row's ``top_k`` largest logits, then its smallest set of mass >= ``top_p``.

    Ties at the top-k boundary keep every tied token, like transformers. The most
    likely token always survives.

    Args:
        logits: [rows, vocab] float32.
        top_k: [rows] int64; a value >= vocab (or -1 mapped to vocab by the caller) is neutral.
        top_p: [rows] float32; 1 is neutral.
    """
    vocab_size = logits.shape[1]
    ascending, order = logits.sort(dim=-1, descending=False)
    kth_largest_index = (vocab_size - top_k.clamp(1, vocab_size)).unsqueeze(1)
    kth_largest = ascending.gather(1, kth_largest_index)
    ascending = ascending.masked_fill(ascending < kth_largest, float("-inf"))
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - top_p).unsqueeze(1)
    drop[:, -1] = False
    ascending = ascending.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ascending)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability.

    Args:
        logits: [rows, vocab] float32.
        min_p: [rows] float32; 0 is neutral.
    """
    probs = logits.softmax(dim=-1)
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))
