"""Beam search: one step of a request's beam group, with transformers' semantics.

A beam search request runs ``best_of`` (W) live beams in lock step. When every
live beam has sampled at the same length, the runner has given each one its best
(token, logprob) candidates; the step merges them by cumulative logprob, keeps the
best ``max(2, 1 + number of stop tokens) * W`` (transformers' ``beams_to_keep``) and

* sets aside as finished hypotheses the candidates among the best W that end the
  sequence (EOS or stop token, ``max_tokens``, the context length), scored
  ``cumulative_logprob / num_output_tokens ** length_penalty``; the best W
  hypotheses so far are kept;
* continues with the best W candidates that do not end it: a beam with several
  continuations forks (its blocks shared, copy-on-write), one with none is freed;
* stops when no candidate continues, when ``early_stopping is True`` and W
  hypotheses are finished, or when transformers' heuristic says no running beam
  can beat the worst finished hypothesis (at the current length, or with
  ``early_stopping="never"`` and ``length_penalty > 0`` at the longest possible one).

The ``n`` best hypotheses become the request's sequences and its only output.

Lock step under preemption: a beam that sampled while a sibling did not (the
sibling was preempted, or is still recomputing) forgets its sample by marking its
last token uncomputed; it recomputes it with the group. Everything a step needs is
the beams' tokens and cumulative logprobs, so recompute and swap give the same search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from corral.beam_search import num_beam_candidates
from corral.config import CoreConfig
from corral.core.interface import Detokenizer
from corral.core.kv_cache_manager import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.core.sequence import BeamState, Request, SeqStatus, Sequence
from corral.core.stop import check_stop
from corral.outputs import Logprobs

Candidates = list[tuple[int, float]]


class _Candidate(NamedTuple):
    score: float  # the parent's cumulative logprob plus this token's
    parent: Sequence
    token_id: int
    logprob: float
    entry: Logprobs | None  # the token's logprobs entry, when the request asked


class BeamSearcher:
    """Applies beam steps for an `EngineCore` (which owns every argument)."""

    def __init__(
        self,
        config: CoreConfig,
        kv: KVCacheManager,
        scheduler: Scheduler,
        detokenizer: Detokenizer | None,
        eos_token_ids: frozenset[int],
        new_seq_id: Callable[[], int],
        append: Callable[[Sequence, int, float, object], None],
    ) -> None:
        self.config = config
        self.kv = kv
        self.scheduler = scheduler
        self.detokenizer = detokenizer
        self.eos_token_ids = eos_token_ids
        self._new_seq_id = new_seq_id
        self._append = append

    def step(self, request: Request, rows: list[tuple[Sequence, Candidates]]) -> bool:
        """One beam step from the beams that sampled; True when the search finished."""
        state = request.beam
        if state is None or request.error is not None:
            return False
        lengths = {len(seq.token_ids) for seq, _ in rows}
        if len(rows) < len(request.seqs) or len(lengths) != 1:
            for seq, _ in rows:
                seq.num_computed_tokens -= 1
            return False
        first = rows[0][0]
        if first.fork_pending:
            self.scheduler.fork_done(first)
        params = request.params
        width = params.best_of
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.eos_token_ids)
        keep = num_beam_candidates(width, len(stop_ids))
        num_top = params.logprobs
        merged: list[_Candidate] = []
        for seq, candidates in rows:
            base = seq.cumulative_logprob
            for token_id, logprob in candidates:
                entry = None
                if num_top is not None:
                    entry = dict(candidates[:num_top])
                    entry[token_id] = logprob
                merged.append(_Candidate(base + logprob, seq, token_id, logprob, entry))
        # A stable sort: equal scores keep the beams' order, then the tokens' rank.
        merged.sort(key=lambda c: -c.score)
        merged = merged[:keep]
        num_output = first.num_output_tokens + 1
        length = len(first.token_ids) + 1
        ends_length = (
            params.max_tokens is not None and num_output >= params.max_tokens
        ) or length > self.config.max_model_len
        may_stop = num_output >= params.min_tokens

        def ends(token_id: int) -> bool:
            return ends_length or (may_stop and token_id in stop_ids)

        running = [c for c in merged if not ends(c.token_id)][:width]
        self._collect_finished(request, state, merged[:width], ends, num_output)
        self._update_heuristic(request, state, running, num_output)
        full = params.early_stopping is True and len(state.finished) == width
        if not running or not state.improvable or full:
            self._finalize(request, state)
            return True
        self._continue(request, state, running)
        return False

    def _collect_finished(
        self,
        request: Request,
        state: BeamState,
        best: list[_Candidate],
        ends: Callable[[int], bool],
        num_output: int,
    ) -> None:
        """Add the best candidates that end to the hypotheses (transformers'
        ``_update_finished_beams``)."""
        params = request.params
        width = params.best_of
        if not state.improvable or (params.early_stopping is True and len(state.finished) == width):
            return
        penalty = num_output**params.length_penalty
        new = [(c.score / penalty, c) for c in best if ends(c.token_id)]
        if not new:
            return
        ranked: list[tuple[float, Sequence | _Candidate]] = [*state.finished, *new]
        ranked.sort(key=lambda item: -item[0])
        state.finished = [
            (score, item if isinstance(item, Sequence) else self._hypothesis(state, item))
            for score, item in ranked[:width]
        ]

    def _update_heuristic(
        self, request: Request, state: BeamState, running: list[_Candidate], num_output: int
    ) -> None:
        """transformers' ``_check_early_stop_heuristic``, after the step."""
        params = request.params
        if not running or len(state.finished) < params.best_of:
            return
        best_length = num_output
        if params.early_stopping == "never" and params.length_penalty > 0.0:
            first = running[0].parent
            best_length = (
                params.max_tokens
                if params.max_tokens is not None
                else self.config.max_model_len - first.num_prompt_tokens
            )
        best_possible = running[0].score / best_length**params.length_penalty
        if best_possible <= state.finished[-1][0]:
            state.improvable = False

    def _hypothesis(self, state: BeamState, candidate: _Candidate) -> Sequence:
        """A finished copy of the candidate's parent plus its token; it holds no blocks."""
        parent = candidate.parent
        seq = parent.fork(self._new_seq_id(), state.next_index)
        state.next_index += 1
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
        seq.num_cached_blocks = 0
        seq.status = SeqStatus.FINISHED
        token_id = candidate.token_id
        seq.token_ids.append(token_id)
        seq.cumulative_logprob = candidate.score
        if seq.logprobs is not None and candidate.entry is not None:
            seq.logprobs.append(candidate.entry)
        new_text = ""
        detokenizer = self.detokenizer
        if detokenizer is not None:
            seq.detok_state = detokenizer.fork_state(parent.detok_state)
            new_text = detokenizer.decode_next(seq.detok_state, token_id)
            seq.output_text += new_text
        check_stop(seq, token_id, new_text, self.eos_token_ids, self.config.max_model_len)
        if detokenizer is not None:
            seq.output_text += detokenizer.flush(seq.detok_state)
        return seq

    def _continue(self, request: Request, state: BeamState, running: list[_Candidate]) -> None:
        """Make the live beams the ``running`` candidates: free the beams without a
        continuation, fork those with several, then append each beam's token."""
        children: dict[Sequence, list[_Candidate]] = {}
        for candidate in running:
            children.setdefault(candidate.parent, []).append(candidate)
        scheduler = self.scheduler
        for seq in list(request.seqs):
            if seq not in children:
                scheduler.remove(seq)
                request.num_finished -= 1
                request.seqs.remove(seq)
        for parent, continuations in children.items():
            # Forks copy the parent before it takes its own token.
            targets = [parent]
            for _ in continuations[1:]:
                child = parent.fork(self._new_seq_id(), state.next_index)
                state.next_index += 1
                self.kv.fork(parent, child)
                if self.detokenizer is not None:
                    child.detok_state = self.detokenizer.fork_state(parent.detok_state)
                request.seqs.append(child)
                scheduler.add_running(child)
                targets.append(child)
            for seq, candidate in zip(targets, continuations, strict=True):
                self._append(seq, candidate.token_id, candidate.logprob, candidate.entry)

    def _finalize(self, request: Request, state: BeamState) -> None:
        """Free the live beams; the ``n`` best hypotheses become the request's sequences."""
        for seq in request.seqs:
            if seq.status is not SeqStatus.FINISHED:
                self.scheduler.remove(seq)
        best = [seq for _, seq in state.finished[: request.params.n]]
        for rank, seq in enumerate(best):
            seq.seq_index = rank
        request.seqs = best
        request.num_finished = len(best)
