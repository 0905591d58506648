"""Requests and their sequences: the state the scheduler moves between queues.

A `Request` is what a caller submitted; it owns one `Sequence` until its prompt is
computed, and ``best_of`` sequences after that (the first sample step forks it). A
sequence carries its tokens, how many of them have KV in the cache, and its block
table. These are hot objects (touched once per sequence per step), so they are
plain slotted classes rather than attrs classes.
"""

from __future__ import annotations

import enum

from corral.outputs import FinishReason, Logprobs, RequestMetrics
from corral.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"


class Request:
    """A submitted request and the sequences it owns."""

    __slots__ = (
        "arrival_index",
        "beam",
        "error",
        "lora_int_id",
        "metrics",
        "num_finished",
        "params",
        "prefix_pos",
        "prompt",
        "prompt_logprobs",
        "prompt_token_ids",
        "request_id",
        "seqs",
    )

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_index: int,
        arrival_time: float,
        prefix_pos: int | None,
        lora_int_id: int = 0,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        # FCFS rank: the order add_request was called in.
        self.arrival_index = arrival_index
        self.prefix_pos = prefix_pos
        # The LoRA adapter (0: the base model): part of the request's identity, so it
        # keys its prefix-cache blocks and counts toward max_loras.
        self.lora_int_id = lora_int_id
        self.metrics = RequestMetrics(arrival_time=arrival_time)
        self.prompt_logprobs: list[Logprobs | None] | None = (
            None if params.prompt_logprobs is None else [None]
        )
        self.seqs: list[Sequence] = []
        self.num_finished = 0
        self.error: str | None = None
        # While a beam search runs, ``seqs`` holds its live beams only.
        self.beam = BeamState() if params.use_beam_search else None

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.seqs)


class BeamState:
    """A beam search request's state besides its live beams (see `corral.core.beam`)."""

    __slots__ = ("finished", "improvable", "next_index")

    def __init__(self) -> None:
        # Finished hypotheses as (length-penalized score, sequence), best first; at
        # most best_of of them. Their sequences hold no blocks and sit in no queue.
        self.finished: list[tuple[float, Sequence]] = []
        # transformers' early-stopping heuristic: False once no running beam can beat
        # the worst finished hypothesis (then nothing more may finish).
        self.improvable = True
        # seq_index of the next forked beam: unique within the request, because the
        # scheduler's queues order sequences by (arrival_index, seq_index).
        self.next_index = 1


class Sequence:
    """One sample of a request. Satisfies `corral.core.interface.ScheduledSequence`.

    While SWAPPED, ``block_table`` holds host block ids; otherwise device block ids.
    ``block_hashes[i]`` is the prefix-cache hash of full block ``i`` (computed lazily,
    only with prefix caching on); the first ``num_cached_blocks`` blocks of the table
    have been offered to the prefix cache.
    """

    __slots__ = (
        "block_hashes",
        "block_table",
        "cumulative_logprob",
        "detok_state",
        "finish_reason",
        "fork_pending",
        "logprobs",
        "lora_int_id",
        "num_cached_blocks",
        "num_computed_tokens",
        "num_prompt_tokens",
        "output_text",
        "params",
        "priority",
        "request",
        "request_id",
        "seq_id",
        "seq_index",
        "status",
        "stop_reason",
        "token_ids",
    )

    def __init__(self, seq_id: int, seq_index: int, request: Request) -> None:
        self.seq_id = seq_id
        self.seq_index = seq_index
        self.request = request
        self.request_id = request.request_id
        self.params = request.params
        self.lora_int_id = request.lora_int_id
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.num_cached_blocks = 0
        self.status = SeqStatus.WAITING
        # Lower sorts first: FCFS by request, then by sample index.
        self.priority = (request.arrival_index, seq_index)
        self.fork_pending = seq_index == 0 and request.params.best_of > 1
        self.output_text = ""
        self.cumulative_logprob = 0.0
        self.logprobs: list[Logprobs] | None = None if request.params.logprobs is None else []
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | str | None = None
        self.detok_state: object = None

    def fork(self, seq_id: int, seq_index: int) -> Sequence:
        """A child with a copy of this sequence's state; the caller shares the blocks."""
        child = Sequence(seq_id, seq_index, self.request)
        child.token_ids = list(self.token_ids)
        child.num_computed_tokens = self.num_computed_tokens
        child.block_table = list(self.block_table)
        child.block_hashes = list(self.block_hashes)
        child.num_cached_blocks = self.num_cached_blocks
        child.status = self.status
        child.fork_pending = False
        child.output_text = self.output_text
        child.cumulative_logprob = self.cumulative_logprob
        if self.logprobs is not None:
            child.logprobs = list(self.logprobs)
        return child

    def finish(self) -> None:
        """Mark the sequence finished (it must already be out of every queue)."""
        self.status = SeqStatus.FINISHED
        self.request.num_finished += 1

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def __repr__(self) -> str:
        return (
            f"Sequence(seq_id={self.seq_id}, request_id={self.request_id!r}, "
            f"status={self.status.value}, len={len(self.token_ids)}, "
            f"num_computed_tokens={self.num_computed_tokens}, block_table={self.block_table})"
        )
