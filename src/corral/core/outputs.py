"""Building the cumulative `RequestOutput` snapshot of a request."""

from __future__ import annotations

from corral.core.sequence import Request
from corral.outputs import CompletionOutput, RequestOutput


def build_output(request: Request, finished: bool) -> RequestOutput:
    """The request's snapshot: its ``n`` best samples (all of them when best_of == n)."""
    seqs = request.seqs
    if len(seqs) > request.params.n:
        seqs = sorted(seqs, key=lambda seq: seq.cumulative_logprob, reverse=True)[
            : request.params.n
        ]
    completions = [
        CompletionOutput.from_window(
            seq.seq_index,
            seq.output_text,
            seq.token_ids,
            seq.num_prompt_tokens,
            len(seq.token_ids),
            seq.cumulative_logprob,
            seq.logprobs,
            seq.finish_reason,
            seq.stop_reason,
        )
        for seq in seqs
    ]
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
