"""The contract between the engine core and whatever computes tokens.

The core schedules; a `ModelRunner` turns one `SchedulerOutput` into one
`ModelRunnerOutput`. Both sides agree on the facts below, and neither recomputes
what the other already knows.

Batch layout. `SchedulerOutput.seqs` lists the scheduled sequences in batch order
(running decodes first, then prefill chunks). Entry `i` computes the input tokens
``seq.token_ids[seq.num_computed_tokens : seq.num_computed_tokens + num_new_tokens[i]]``
at positions starting at ``seq.num_computed_tokens``; their KV goes to the slots
``slot_mapping[offset_i : offset_i + num_new_tokens[i]]`` (the flat concatenation over
entries). After the step the context length of entry `i` is
``seq.num_computed_tokens + num_new_tokens[i]``, and ``seq.block_table`` already holds
every block that context needs. The runner reads the sequences and never mutates them;
the core updates them after `execute` returns.

Sampling. ``num_samples[i]`` is 0 for a prefill chunk that does not reach the end of
the known tokens, 1 for an ordinary sampling step, and ``params.best_of`` on the step
that completes the prompt of a request with best_of > 1 (the core then forks the
sequence: sample ``j`` goes to the child with ``seq_index == j``). A beam search
sequence (``params.use_beam_search``) samples like any other, and its rows also
carry ``beam_candidates`` (on its first step, ``best_of`` identical rows; the core
reads the first). Sampled tokens are flat over entries in batch order. Log-probabilities are of the model's raw
distribution (log_softmax of the logits before temperature, penalties or
truncation), like vLLM's default. A seeded request's sample for child ``j`` at output
position ``k`` (``len(token_ids) - num_prompt_tokens`` before the sample) is a pure
function of ``(params.seed, j, k)`` and the logits, so it does not depend on the
batch, on preemption or on chunking.

Prompt log-probabilities. For a request whose ``params.prompt_logprobs`` is not None,
a chunk computing tokens ``[a, b)`` yields entries for prompt tokens
``a+1 .. min(b, num_prompt_tokens - 1)`` inclusive (token ``t`` given tokens ``< t``). The core
never serves such a request from the prefix cache, so every prompt position is
computed once.

Block movement. Before the forward pass the runner applies, in this order,
``blocks_to_swap_out`` (device block -> host block), ``blocks_to_swap_in``
(host block -> device block) and ``blocks_to_copy`` (device -> device, copy-on-write),
each a list of ``(src, dst)`` block ids.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, Protocol

import attrs

from corral.outputs import Logprobs

if TYPE_CHECKING:
    from corral.sampling_params import SamplingParams


class ScheduledSequence(Protocol):
    """What the runner may read of a scheduled sequence (read-only)."""

    @property
    def seq_id(self) -> int:
        """Unique for the engine's lifetime."""
        ...

    @property
    def seq_index(self) -> int:
        """Index of this sample within its request, 0 .. best_of - 1."""
        ...

    @property
    def request_id(self) -> str: ...

    @property
    def token_ids(self) -> list[int]:
        """Prompt tokens followed by the tokens generated so far."""
        ...

    @property
    def num_prompt_tokens(self) -> int: ...

    @property
    def num_computed_tokens(self) -> int:
        """Tokens whose KV is in the cache before this step."""
        ...

    @property
    def block_table(self) -> list[int]: ...

    @property
    def params(self) -> SamplingParams: ...

    @property
    def lora_int_id(self) -> int:
        """The LoRA adapter this sequence runs with; 0 for the base model."""
        ...


@attrs.define(slots=True)
class SchedulerOutput:
    """One step's work. Parallel lists over the scheduled sequences."""

    seqs: list[ScheduledSequence] = attrs.field(factory=list)
    num_new_tokens: list[int] = attrs.field(factory=list)
    num_samples: list[int] = attrs.field(factory=list)
    slot_mapping: list[int] = attrs.field(factory=list)
    blocks_to_swap_out: list[tuple[int, int]] = attrs.field(factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = attrs.field(factory=list)
    blocks_to_copy: list[tuple[int, int]] = attrs.field(factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return len(self.slot_mapping)

    @property
    def is_empty(self) -> bool:
        return not self.seqs and not (
            self.blocks_to_swap_out or self.blocks_to_swap_in or self.blocks_to_copy
        )


@attrs.define(slots=True)
class ModelRunnerOutput:
    """What one step computed. Sample lists are flat over entries with num_samples > 0."""

    sampled_token_ids: list[int] = attrs.field(factory=list)
    sampled_logprobs: list[float] = attrs.field(factory=list)
    # One entry per sampled token: None unless the request asked for logprobs.
    top_logprobs: list[Logprobs | None] = attrs.field(factory=list)
    # seq_id -> prompt log-probabilities of the prompt tokens this chunk covered.
    prompt_logprobs: dict[int, list[Logprobs]] = attrs.field(factory=dict)
    # Empty unless a beam search sequence sampled; then one entry per sampled token:
    # for a beam search row its best (token id, logprob) pairs, best first (how many:
    # `corral.beam_search.num_beam_candidates`, at least params.logprobs); else None.
    beam_candidates: list[list[tuple[int, float]] | None] = attrs.field(factory=list)


class ModelRunner(Protocol):
    """Computes one scheduled step. Called by exactly one thread at a time."""

    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput: ...


class Detokenizer(Protocol):
    """Incremental detokenization, owned by the tokenization layer."""

    def new_state(self, prompt_token_ids: SequenceABC[int], params: SamplingParams) -> object:
        """Fresh per-sequence state (a forked child gets its own via `fork_state`)."""
        ...

    def fork_state(self, state: object) -> object:
        """An independent copy of `state`, for a forked sequence."""
        ...

    def decode_next(self, state: object, token_id: int) -> str:
        """Feed one generated token; return the text it completes (maybe "")."""
        ...

    def flush(self, state: object) -> str:
        """Text still held back once no token will follow (the sequence finished)."""
        ...
