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
    window = CompletionOutput.from_window
    completions = []
    for seq in seqs:
        token_ids = seq.token_ids
        completions.append(
            window(
                seq.seq_index,
                seq.output_text,
                token_ids,
                seq.num_prompt_tokens,
                len(token_ids),
                seq.cumulative_logprob,
                seq.logprobs,
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
