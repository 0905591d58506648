"""A deterministic fake model that keeps a fake KV cache.

`FakeModelRunner` implements `corral.core.interface.ModelRunner` without torch. Every
computed token is written, with its position and a hash chained over the whole token
history, into the slot the scheduler chose. To sample, the runner reads the context
back *through the block table*: a wrong block table, a missing copy-on-write copy or
a broken swap changes the hash and so the sampled tokens, and a test comparing
outputs catches it. With correct bookkeeping, a sequence's tokens are a pure
function of its token history (plus ``seed``, sample index and output position for
sampled requests), whatever the batch, chunking, prefix hits or preemptions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from corral.core.interface import ModelRunnerOutput, ScheduledSequence, SchedulerOutput
from corral.errors import NotSupportedError

_ROOT = 0x5EED
_CORRUPT = -0xBAD
_Entry = tuple[int, int, int]  # (token id, position, history hash)


class FakeModelError(RuntimeError):
    """The failure a `FakeModelRunner` injects."""


def _mix(*values: int) -> int:
    # Tuple hashing of ints is deterministic across processes (no hash seed).
    return hash(values) & 0x7FFF_FFFF_FFFF_FFFF


class FakeModelRunner:
    """Deterministic stand-in for the model runner, for tests and benchmarks.

    Args:
        block_size: Must equal the core's block size (slots are read back with it).
        num_kv_blocks: Device blocks; a block id outside ``[0, num_kv_blocks)`` raises.
            None disables the check.
        num_host_blocks: Host blocks, checked the same way.
        vocab_size: Sampled token ids lie in ``[0, vocab_size)``.
        check_context: Re-read the whole context at every sample (slower, catches
            corruption of any block). Otherwise only the last slot is read, which
            still catches any wrong block at the moment it is written.
        fail_at_step: Raise `FakeModelError` on this call of `execute` (1-based).
        fail_on_token: Raise `FakeModelError` when a step computes this token id.
        step_delay: Seconds to sleep in every `execute` (a slow model).

    Tests of the async engine wait on the runner's steps with `wait_for_step` rather
    than polling: the engine calls `execute` in a worker thread, and the runner wakes
    the waiting task in the event loop when a step ends.
    """

    def __init__(
        self,
        *,
        block_size: int = 16,
        num_kv_blocks: int | None = None,
        num_host_blocks: int | None = None,
        vocab_size: int = 64,
        check_context: bool = True,
        fail_at_step: int | None = None,
        fail_on_token: int | None = None,
        step_delay: float = 0.0,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if step_delay < 0:
            raise ValueError(f"step_delay must be non-negative, got {step_delay}")
        self.block_size = block_size
        self.num_kv_blocks = num_kv_blocks
        self.num_host_blocks = num_host_blocks
        self.vocab_size = vocab_size
        self.check_context = check_context
        self.fail_at_step = fail_at_step
        self.fail_on_token = fail_on_token
        self.step_delay = step_delay
        self.num_steps = 0
        self.num_steps_done = 0
        # (started, step, wake, event loop thread, event loop token) of the tasks in
        # wait_for_step; `execute` runs in the engine's worker thread.
        self._waiters: list[tuple[bool, int, Callable[[], None], int, Any]] = []
        self._waiters_lock = threading.Lock()
        self.device: dict[int, _Entry] = {}
        self.host: dict[int, _Entry] = {}

    async def wait_for_step(self, step: int | None = None, *, started: bool = False) -> int:
        """Wait until `execute` has ended (returned or raised) for the ``step``-th time,
        or with ``started=True`` until it has begun it; ``step`` is 1-based and is by
        default the next one. Returns the number of steps ended (begun).

        Returns at once (after a checkpoint) when that has already happened. Call it
        from the event loop that drives the engine; bound it with ``fail_after``.
        """
        import anyio

        with self._waiters_lock:
            count = self.num_steps if started else self.num_steps_done
            if step is None:
                step = count + 1
            event = None
            if count < step:
                event = anyio.Event()
                token = anyio.lowlevel.current_token()
                waiter = (started, step, event.set, threading.get_ident(), token)
                self._waiters.append(waiter)
        if event is None:
            await anyio.lowlevel.checkpoint()
            return count
        try:
            await event.wait()
        finally:
            with self._waiters_lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.num_steps if started else self.num_steps_done

    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Apply block movements, write the new tokens' KV, sample."""
        with self._waiters_lock:
            self.num_steps += 1
        self._wake(started=True)
        try:
            return self._execute(scheduler_output)
        finally:
            with self._waiters_lock:
                self.num_steps_done += 1
            self._wake(started=False)

    def _wake(self, *, started: bool) -> None:
        count = self.num_steps if started else self.num_steps_done
        with self._waiters_lock:
            due = [w for w in self._waiters if w[0] == started and w[1] <= count]
            for waiter in due:
                self._waiters.remove(waiter)
        for _, _, wake, thread, token in due:
            if thread == threading.get_ident():
                wake()  # a step run inline by the event loop (the engine's final flush)
            else:
                import anyio.from_thread

                anyio.from_thread.run_sync(wake, token=token)

    def _execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        if self.fail_at_step is not None and self.num_steps == self.fail_at_step:
            raise FakeModelError(f"injected failure at step {self.num_steps}")
        if self.step_delay:
            time.sleep(self.step_delay)
        so = scheduler_output
        if not len(so.seqs) == len(so.num_new_tokens) == len(so.num_samples):
            raise ValueError("SchedulerOutput: seqs, num_new_tokens, num_samples differ in length")
        if len(so.slot_mapping) != sum(so.num_new_tokens):
            raise ValueError("SchedulerOutput: slot_mapping length != sum(num_new_tokens)")
        self._move(
            self.device, self.host, so.blocks_to_swap_out, self.num_kv_blocks, self.num_host_blocks
        )
        self._move(
            self.host, self.device, so.blocks_to_swap_in, self.num_host_blocks, self.num_kv_blocks
        )
        self._move(
            self.device, self.device, so.blocks_to_copy, self.num_kv_blocks, self.num_kv_blocks
        )
        out = ModelRunnerOutput()
        offset = 0
        for seq, num_new, num_samples in zip(
            so.seqs, so.num_new_tokens, so.num_samples, strict=True
        ):
            self._write(seq, so.slot_mapping[offset : offset + num_new])
            offset += num_new
            end = seq.num_computed_tokens + num_new
            if (
                seq.params.prompt_logprobs is not None
                and seq.num_computed_tokens < seq.num_prompt_tokens
            ):
                out.prompt_logprobs[seq.seq_id] = self._prompt_logprobs(seq, end)
            if num_samples:
                self._sample(seq, end, num_samples, out)
        return out

    def _move(
        self,
        src: dict[int, _Entry],
        dst: dict[int, _Entry],
        mapping: list[tuple[int, int]],
        num_src: int | None,
        num_dst: int | None,
    ) -> None:
        bs = self.block_size
        for s, d in mapping:
            self._check_block(s, num_src)
            self._check_block(d, num_dst)
            for o in range(bs):
                entry = src.get(s * bs + o)
                if entry is None:
                    dst.pop(d * bs + o, None)
                else:
                    dst[d * bs + o] = entry

    @staticmethod
    def _check_block(block: int, num_blocks: int | None) -> None:
        if block < 0 or (num_blocks is not None and block >= num_blocks):
            raise ValueError(f"block id {block} out of range [0, {num_blocks})")

    def _slot(self, block_table: list[int], pos: int) -> int:
        bs = self.block_size
        return block_table[pos // bs] * bs + pos % bs

    def _history_hash(self, block_table: list[int], pos: int) -> int:
        """The hash stored at ``pos``, read through the block table."""
        if pos < 0:
            return _ROOT
        if pos // self.block_size >= len(block_table):
            return _CORRUPT
        entry = self.device.get(self._slot(block_table, pos))
        if entry is None or entry[1] != pos:
            return _CORRUPT
        return entry[2]

    def _write(self, seq: ScheduledSequence, slots: list[int]) -> None:
        start = seq.num_computed_tokens
        token_ids = seq.token_ids
        block_table = seq.block_table
        h = self._history_hash(block_table, start - 1)
        for t, slot in enumerate(slots):
            pos = start + t
            token = token_ids[pos]
            if token == self.fail_on_token:
                raise FakeModelError(f"injected failure on token {token}")
            self._check_block(slot // self.block_size, self.num_kv_blocks)
            h = _mix(h, token, pos)
            self.device[slot] = (token, pos, h)

    def _context_hash(self, block_table: list[int], length: int) -> int:
        if not self.check_context:
            return self._history_hash(block_table, length - 1)
        h = _ROOT
        for pos in range(length):
            if pos // self.block_size >= len(block_table):
                return _CORRUPT
            entry = self.device.get(self._slot(block_table, pos))
            if entry is None or entry[1] != pos:
                return _CORRUPT
            h = _mix(h, entry[0], pos)
        return h

    def logprob(self, history_hash: int, token: int) -> float:
        """The fake log-probability of ``token`` after a history, in (-4, 0)."""
        return -0.001 - (_mix(history_hash, token, 1) % 4000) / 1000

    def _top(self, history_hash: int, token: int, k: int) -> dict[int, float]:
        top = {token: self.logprob(history_hash, token)}
        for r in range(1, k + 1):
            other = (token + r) % self.vocab_size
            top.setdefault(other, self.logprob(history_hash, other))
        return top

    def _prompt_logprobs(self, seq: ScheduledSequence, end: int) -> list[dict[int, float]]:
        k = seq.params.prompt_logprobs or 0
        entries = []
        for t in range(seq.num_computed_tokens + 1, min(end + 1, seq.num_prompt_tokens)):
            h = self._history_hash(seq.block_table, t - 1)
            entries.append(self._top(h, seq.token_ids[t], k))
        return entries

    def _sample(
        self, seq: ScheduledSequence, end: int, num_samples: int, out: ModelRunnerOutput
    ) -> None:
        params = seq.params
        if params.logits_processors:
            raise NotSupportedError("FakeModelRunner does not run logits_processors")
        h = self._context_hash(seq.block_table, end)
        position = len(seq.token_ids) - seq.num_prompt_tokens
        for j in range(num_samples):
            index = seq.seq_index if num_samples == 1 else j
            if params.greedy:
                token = h % self.vocab_size
            else:
                seed = _ROOT if params.seed is None else params.seed
                token = _mix(h, seed, index, position) % self.vocab_size
            logprob = self.logprob(h, token)
            out.sampled_token_ids.append(token)
            out.sampled_logprobs.append(logprob)
            out.top_logprobs.append(
                None if params.logprobs is None else self._top(h, token, params.logprobs)
            )
