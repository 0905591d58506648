"""`EngineCore`: the synchronous engine. One `step()` = schedule, run, update.

Single-threaded by contract: one caller (the async engine loop, or the offline
`LLM`) calls every method. ``add_request`` and ``abort_request`` take effect at the
next ``step()``; ``step()`` returns a cumulative `RequestOutput` for every request
that changed (new tokens, finished, aborted or rejected).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import cast

from corral.config import CoreConfig
from corral.core.beam import BeamSearcher, Candidates
from corral.core.interface import Detokenizer, ModelRunner, ModelRunnerOutput, SchedulerOutput
from corral.core.kv_cache_manager import KVCacheManager
from corral.core.outputs import build_output
from corral.core.scheduler import Scheduler
from corral.core.sequence import Request, SeqStatus, Sequence
from corral.core.stop import check_stop
from corral.core.validation import validate_request
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.stats import EngineStats


class EngineCore:
    """Continuous batching over a paged KV cache, without threads or async.

    Args:
        config: The resolved scheduling and cache configuration.
        runner: Computes each scheduled step (see `corral.core.interface`).
        eos_token_ids: Token ids that end a sequence unless ``ignore_eos``.
        detokenizer: Turns generated tokens into text. Without one, texts stay ""
            and requests with stop strings are rejected.
    """

    def __init__(
        self,
        config: CoreConfig,
        runner: ModelRunner,
        *,
        eos_token_ids: Iterable[int] = (),
        detokenizer: Detokenizer | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.eos_token_ids = frozenset(eos_token_ids)
        self.detokenizer = detokenizer
        self.kv = KVCacheManager(config)
        self.scheduler = Scheduler(config, self.kv, self._finish_too_large)
        self._requests: dict[str, Request] = {}
        # Requests with an output due at the next step that no model step produces:
        # aborted ones and rejected ones. Insertion-ordered, no duplicates.
        self._due: dict[Request, None] = {}
        self._next_seq_id = 0
        self._next_arrival = 0
        self._num_prompt_tokens = 0
        self._num_generation_tokens = 0
        # Beam search requests with a beam that can never fit, to end after the step.
        self._beam_errors: list[Request] = []
        self._beam = BeamSearcher(
            config,
            self.kv,
            self.scheduler,
            detokenizer,
            self.eos_token_ids,
            self._new_seq_id,
            self._append,
        )

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
        arrival_time: float | None = None,
        prefix_pos: int | None = None,
        lora_int_id: int = 0,
    ) -> None:
        """Queue a request.

        Args:
            request_id: Unique among live requests; reusable once its final output
                came out.
            prompt_token_ids: The prompt, at least one token.
            params: How to sample.
            prompt: The prompt text, echoed in outputs.
            arrival_time: ``time.time()`` of arrival; now when None.
            prefix_pos: Hint that the first ``prefix_pos`` prompt tokens are a prefix
                shared by many requests: their full blocks, once cached and free, are
                evicted only after every other free block. It does not affect
                correctness or which blocks are looked up.
            lora_int_id: The LoRA adapter it runs with (0: the base model); the runner
                must already hold the adapter (the front doors load it first).

        A request that can never run (see `validate_request`) is accepted and
        finishes at the next step with finish_reason "abort" and an ``error``.

        Raises:
            ValueError: Duplicate live ``request_id``, or a malformed request (see
                `validate_request`).
        """
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use by a live request")
        if lora_int_id and not self.config.max_loras:
            raise ValueError(
                "lora_request: LoRA is not enabled (start the engine with enable_lora)"
            )
        prompt_token_ids = list(prompt_token_ids)
        error = validate_request(
            self.config,
            prompt_token_ids,
            params,
            prefix_pos,
            has_detokenizer=self.detokenizer is not None,
        )
        request = Request(
            request_id,
            prompt,
            prompt_token_ids,
            params,
            self._next_arrival,
            time.time() if arrival_time is None else arrival_time,
            prefix_pos,
            lora_int_id,
        )
        self._next_arrival += 1
        seq = Sequence(self._new_seq_id(), 0, request)
        if self.detokenizer is not None:
            seq.detok_state = self.detokenizer.new_state(prompt_token_ids, params)
        request.seqs.append(seq)
        self._requests[request_id] = request
        if error is not None:
            request.error = error
            seq.finish()
            seq.finish_reason = "abort"
            self._due[request] = None
        else:
            self.scheduler.add(seq)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        """Stop requests now and free their blocks; their final outputs (finish_reason
        "abort") come out of the next `step`. Unknown or finished ids are ignored."""
        ids = (request_id,) if isinstance(request_id, str) else request_id
        for rid in ids:
            request = self._requests.get(rid)
            if request is None:
                continue
            for seq in request.seqs:
                if seq.status is not SeqStatus.FINISHED:
                    self.scheduler.remove(seq)
                    seq.finish_reason = "abort"
            self._due[request] = None

    def has_unfinished_requests(self) -> bool:
        """True while some request has not had its final output returned by `step`."""
        return bool(self._requests)

    def step(self) -> list[RequestOutput]:
        """Run one step and return the outputs of the requests that changed."""
        scheduler_output = self.scheduler.schedule()
        now = time.time()
        changed = self._due
        self._due = {}
        if not scheduler_output.is_empty:
            result = self.runner.execute(scheduler_output)
            self._update(scheduler_output, result, now, changed)
        if self._beam_errors:
            for request in self._beam_errors:
                self._abort_beams(request)
            self._beam_errors = []
        return [self._output(request, now) for request in changed]

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        pool = self.kv.pool
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            num_swapped=len(scheduler.swapped),
            num_unfinished_requests=len(self._requests),
            num_free_blocks=pool.num_free,
            num_total_blocks=pool.num_blocks,
            kv_cache_usage=1.0 - pool.num_free / pool.num_blocks,
            num_preemptions=scheduler.num_preemptions,
            prefix_cache_queries=self.kv.prefix_cache_queries,
            prefix_cache_hits=self.kv.prefix_cache_hits,
            num_prompt_tokens=self._num_prompt_tokens,
            num_generation_tokens=self._num_generation_tokens,
            **self._lora_counts(),
        )

    def _lora_counts(self) -> dict[str, dict[int, int]]:
        if not self.config.max_loras:
            return {}
        scheduler = self.scheduler
        running = Counter(s.lora_int_id for s in scheduler.running if s.lora_int_id)
        queued = (s for _, s in (*scheduler.waiting, *scheduler.swapped))
        waiting = Counter(s.lora_int_id for s in queued if s.lora_int_id)
        return {"lora_running": dict(running), "lora_waiting": dict(waiting)}

    def _new_seq_id(self) -> int:
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        return seq_id

    def _finish_too_large(self, seq: Sequence, error: str) -> None:
        seq.finish_reason = "abort"
        seq.request.error = error
        self._due[seq.request] = None
        if seq.request.beam is not None:
            self._beam_errors.append(seq.request)

    def _abort_beams(self, request: Request) -> None:
        """End a beam search whose beam could never fit (after the step: the scheduler
        found it mid-schedule, when its siblings could not leave their queues).

        `validate_request` refuses beam groups the cache cannot hold, so this guards
        an invariant: without it the siblings would wait for the lost beam forever."""
        for seq in request.seqs:
            if seq.status is not SeqStatus.FINISHED:
                self.scheduler.remove(seq)
                seq.finish_reason = "abort"

    def _update(
        self,
        scheduler_output: SchedulerOutput,
        result: ModelRunnerOutput,
        now: float,
        changed: dict[Request, None],
    ) -> None:
        """Apply a step's results in two passes over the batch: the computed tokens,
        then the sampled ones."""
        # Two loops over the batch rather than a helper call per entry and phase:
        # benchmarks/scheduler.py measured update_us 1.4x higher (median of 12 paired
        # runs) with per-entry helpers. The passes may run one after the other because
        # appending (which can finish a sequence and free its blocks) changes nothing
        # the first pass reads of the other entries.
        # The scheduler only ever schedules our own Sequence objects.
        seqs = cast(list[Sequence], scheduler_output.seqs)
        self._advance(seqs, scheduler_output.num_new_tokens, result, now, changed)
        self._append_samples(seqs, scheduler_output.num_samples, result, now, changed)

    def _advance(
        self,
        seqs: list[Sequence],
        num_new_tokens: list[int],
        result: ModelRunnerOutput,
        now: float,
        changed: dict[Request, None],
    ) -> None:
        """Count each entry's new tokens as computed: offer newly full blocks to the
        prefix cache, and do the bookkeeping of prompt tokens."""
        kv = self.kv
        caching = kv.enable_prefix_caching
        block_size = kv.block_size
        for seq, num_new in zip(seqs, num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            end = start + num_new
            seq.num_computed_tokens = end
            if caching and end // block_size > seq.num_cached_blocks:
                kv.cache_full_blocks(seq)
            if start < seq.num_prompt_tokens:
                self._prefill_done(seq, start, end, result, now)
                if end >= seq.num_prompt_tokens and seq.params.max_tokens == 0:
                    # Scoring only: the prompt logprobs are all there, nothing is sampled.
                    seq.finish_reason = "length"
                    self.scheduler.remove(seq)
                    changed[seq.request] = None

    def _append_samples(
        self,
        seqs: list[Sequence],
        num_samples: list[int],
        result: ModelRunnerOutput,
        now: float,
        changed: dict[Request, None],
    ) -> None:
        """Append the sampled tokens, which are flat over the entries that sample, in
        batch order; an entry with several samples completed the prompt of a best_of
        request and forks into them."""
        append = self._append
        sampled = result.sampled_token_ids
        sampled_logprobs = result.sampled_logprobs
        top_logprobs = result.top_logprobs
        beam_candidates = result.beam_candidates
        beam_rows: dict[Request, list[tuple[Sequence, Candidates]]] = {}
        num_duplicates = 0
        k = 0
        for seq, count in zip(seqs, num_samples, strict=True):
            if not count:
                continue
            if beam_candidates and (candidates := beam_candidates[k]) is not None:
                # A beam's first step samples best_of identical rows; one is enough.
                beam_rows.setdefault(seq.request, []).append((seq, candidates))
                num_duplicates += count - 1
                k += count
                continue
            if count == 1:
                append(seq, sampled[k], sampled_logprobs[k], top_logprobs[k])
                k += 1
            else:
                if seq.request.beam is not None:
                    raise RuntimeError(
                        "the model runner gave no beam candidates for a beam search request"
                    )
                for target in self._fork(seq, count):
                    append(target, sampled[k], sampled_logprobs[k], top_logprobs[k])
                    k += 1
            request = seq.request
            metrics = request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            changed[request] = None
        self._num_generation_tokens += k - num_duplicates
        if beam_rows:
            self._beam_steps(beam_rows, now, changed)

    def _beam_steps(
        self,
        beam_rows: dict[Request, list[tuple[Sequence, Candidates]]],
        now: float,
        changed: dict[Request, None],
    ) -> None:
        """Beam steps of the requests whose beams sampled; a beam search request
        outputs nothing until it finishes (like vLLM's)."""
        for request, rows in beam_rows.items():
            metrics = request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            if self._beam.step(request, rows):
                changed[request] = None

    def _prefill_done(
        self, seq: Sequence, start: int, end: int, result: ModelRunnerOutput, now: float
    ) -> None:
        """Bookkeeping for a step that computed prompt tokens ``[start, end)``."""
        request = seq.request
        if request.metrics.first_scheduled_time is None:
            request.metrics.first_scheduled_time = now
        self._num_prompt_tokens += min(end, seq.num_prompt_tokens) - start
        if request.prompt_logprobs is not None:
            self._add_prompt_logprobs(seq, start, result)

    def _fork(self, seq: Sequence, count: int) -> list[Sequence]:
        request = seq.request
        self.scheduler.fork_done(seq)
        targets = [seq]
        for index in range(1, count):
            child = seq.fork(self._new_seq_id(), index)
            self.kv.fork(seq, child)
            if self.detokenizer is not None:
                child.detok_state = self.detokenizer.fork_state(seq.detok_state)
            request.seqs.append(child)
            self.scheduler.add_running(child)
            targets.append(child)
        return targets

    def _append(self, seq: Sequence, token_id: int, logprob: float, top: object) -> None:
        seq.token_ids.append(token_id)
        seq.cumulative_logprob += logprob
        if seq.logprobs is not None:
            seq.logprobs.append(top)  # type: ignore[arg-type]
        new_text = ""
        if self.detokenizer is not None:
            new_text = self.detokenizer.decode_next(seq.detok_state, token_id)
            seq.output_text += new_text
        check_stop(seq, token_id, new_text, self.eos_token_ids, self.config.max_model_len)
        if seq.finish_reason is not None:
            # Bytes of an unfinished character held back by the detokenizer belong to
            # the text unless a stop string cut it.
            if self.detokenizer is not None and not isinstance(seq.stop_reason, str):
                seq.output_text += self.detokenizer.flush(seq.detok_state)
            self.scheduler.remove(seq)

    @staticmethod
    def _add_prompt_logprobs(seq: Sequence, start: int, result: ModelRunnerOutput) -> None:
        # Entry j of a chunk starting at `start` is for prompt token start + 1 + j.
        # A recomputed chunk repeats known entries; keep the first copy.
        entries = result.prompt_logprobs.get(seq.seq_id)
        prompt_logprobs = seq.request.prompt_logprobs
        if not entries or prompt_logprobs is None:
            return
        for j, entry in enumerate(entries):
            token = start + 1 + j
            if token == len(prompt_logprobs) and token < seq.num_prompt_tokens:
                prompt_logprobs.append(entry)

    def _output(self, request: Request, now: float) -> RequestOutput:
        finished = request.finished
        if finished:
            request.metrics.finished_time = now
            del self._requests[request.request_id]
        return build_output(request, finished)
