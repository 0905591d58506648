"""Building the cumulative `RequestOutput` snapshot of a request."""

from __future__ import annotations

from corral.core.sequence import Request
from corral.outputs import CompletionOutput, RequestOutput


def build_output(request: Request, finished: bool) -> RequestOutput:
    """The request's snapshot: its ``n`` best samples (all of them when best_of == n)."""
    seqs = request.seqs
    n = request.params.n
    if len(seqs) > n:
        seqs = sorted(seqs, key=lambda seq: seq.cumulative_logprob, reverse=True)[:n]
    completions = []
    for seq in seqs:
        logprobs = seq.logprobs
        completions.append(
            CompletionOutput(
                seq.seq_index,
                seq.output_text,
                seq.token_ids[seq.num_prompt_tokens :],
                seq.cumulative_logprob,
                None if logprobs is None else list(logprobs),
                seq.finish_reason,
                seq.stop_reason,
            )
        )
    return RequestOutput(
        request.request_id,
        request.prompt,
        request.prompt_token_ids,
        request.prompt_logprobs,
        completions,
        finished,
        request.metrics,
        request.error,
    )
