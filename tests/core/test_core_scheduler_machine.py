"""State machine over EngineCore + fake model: add, abort and step in any order.

Tiny caches force preemption (both modes), swapping, prefix hits and chunking. After
every step: the token budget and max_num_seqs hold, blocks are conserved, and
requests are first admitted in arrival order. At the end every request runs to
completion (liveness), outputs of requests that were not aborted equal the outputs of
running each one alone, and every block is free.
"""

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral.core import EngineCore
from corral.core.interface import ModelRunnerOutput, SchedulerOutput
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.testing import FakeModelRunner, make_fake_core, sampling_params, workloads

_VOCAB = 64
_ALONE: dict[tuple, tuple] = {}


class RecordingRunner(FakeModelRunner):
    """The fake model, remembering what each step scheduled."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(vocab_size=_VOCAB, **kwargs)  # type: ignore[arg-type]
        self.batches: list[SchedulerOutput] = []

    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        self.batches.append(scheduler_output)
        return super().execute(scheduler_output)


def _summary(out: RequestOutput) -> tuple:
    return (
        tuple(
            (
                c.index,
                tuple(c.token_ids),
                c.text,
                c.cumulative_logprob,
                c.finish_reason,
                c.stop_reason,
                None
                if c.logprobs is None
                else tuple(map(tuple, map(sorted, map(dict.items, c.logprobs)))),
            )
            for c in out.outputs
        ),
        None if out.prompt_logprobs is None else repr(out.prompt_logprobs),
        out.error,
    )


def _drain(core: EngineCore, max_steps: int) -> dict[str, RequestOutput]:
    final: dict[str, RequestOutput] = {}
    for _ in range(max_steps):
        if not core.has_unfinished_requests():
            return final
        for out in core.step():
            if out.finished:
                final[out.request_id] = out
    raise AssertionError(f"not idle after {max_steps} steps: {core.stats()}")


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        block_size=st.sampled_from([1, 2, 4]),
        capacity=st.integers(16, 48),
        num_host_blocks=st.integers(0, 16),
        max_num_seqs=st.integers(2, 6),
        budget=st.integers(6, 24),
        chunked=st.booleans(),
        caching=st.booleans(),
        mode=st.sampled_from(["recompute", "swap"]),
        workload=workloads(
            max_requests=8,
            max_prompt_len=14,
            vocab_size=_VOCAB,
            params=sampling_params(max_tokens=10, vocab_size=_VOCAB),
        ),
    )
    def setup(
        self,
        block_size,
        capacity,
        num_host_blocks,
        max_num_seqs,
        budget,
        chunked,
        caching,
        mode,
        workload,
    ) -> None:
        num_kv_blocks = capacity // block_size
        max_model_len = 24
        self.config = {
            "block_size": block_size,
            "num_kv_blocks": num_kv_blocks,
            "num_host_blocks": num_host_blocks,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max(budget, max_num_seqs) if chunked else max_model_len,
            "enable_chunked_prefill": chunked,
            "enable_prefix_caching": caching,
            "preemption_mode": mode,
        }
        self.runner = RecordingRunner(
            block_size=block_size, num_kv_blocks=num_kv_blocks, num_host_blocks=num_host_blocks
        )
        self.core = make_fake_core(self.runner, **self.config)
        self.requests: dict[str, tuple[list[int], SamplingParams]] = {}
        self.aborted: set[str] = set()
        self.final: dict[str, RequestOutput] = {}
        self.first_seen: list[int] = []
        self.next_id = 0
        for request in workload:
            self._add(request.prompt_token_ids, request.params)

    def _record(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            if out.finished:
                assert out.request_id not in self.final, "a request finished twice"
                self.final[out.request_id] = out

    @rule(
        prompt=st.lists(st.integers(1, _VOCAB - 1), min_size=1, max_size=16),
        shared=st.booleans(),
        params=sampling_params(max_tokens=10, vocab_size=_VOCAB),
    )
    def add(self, prompt: list[int], shared: bool, params: SamplingParams) -> None:
        if shared:
            prompt = [7, 8, 9, 10, 11, 12, *prompt][:16]
        self._add(prompt, params)

    def _add(self, prompt: list[int], params: SamplingParams) -> None:
        request_id = str(self.next_id)
        self.next_id += 1
        self.requests[request_id] = (prompt, params)
        self.core.add_request(request_id, prompt, params)

    @precondition(lambda self: len(self.requests) > len(self.final) + len(self.aborted))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        live = sorted(set(self.requests) - set(self.final) - self.aborted, key=int)
        request_id = data.draw(st.sampled_from(live))
        self.aborted.add(request_id)
        self.core.abort_request(request_id)
        self.core.abort_request(request_id)

    @rule()
    def step(self) -> None:
        before = len(self.runner.batches)
        self._record(self.core.step())
        for batch in self.runner.batches[before:]:
            self._check_batch(batch)

    def _check_batch(self, batch: SchedulerOutput) -> None:
        assert batch.num_batched_tokens <= self.config["max_num_batched_tokens"]
        assert len(batch.seqs) <= self.config["max_num_seqs"]
        assert len({seq.seq_id for seq in batch.seqs}) == len(batch.seqs)
        seen_chunk = False
        for n in batch.num_new_tokens:
            assert n >= 1
            seen_chunk = seen_chunk or n > 1
            assert not (seen_chunk and n == 1), "decodes must come before prefill chunks"
        # Within a step the batch order is decodes-first, so compare admissions by step.
        new = {int(seq.request_id) for seq in batch.seqs} - set(self.first_seen)
        self.first_seen.extend(sorted(new))
        assert self.first_seen == sorted(self.first_seen), "admission is not FCFS"

    @invariant()
    def blocks_are_conserved(self) -> None:
        if not hasattr(self, "core"):
            return
        pool = self.core.kv.pool
        referenced = sum(1 for r in pool.ref_counts if r > 0)
        assert referenced + pool.num_free == pool.num_blocks
        assert all(r >= 0 for r in pool.ref_counts)
        assert self.core.stats().num_running <= self.config["max_num_seqs"]

    def teardown(self) -> None:
        if not hasattr(self, "core"):
            return
        self._record_rest()
        stats = self.core.stats()
        event(f"preempted: {stats.num_preemptions > 0}")
        event(f"swapped: {any(b.blocks_to_swap_out for b in self.runner.batches)}")
        event(f"copy-on-write: {any(b.blocks_to_copy for b in self.runner.batches)}")
        event(f"prefix hits: {stats.prefix_cache_hits > 0}")
        event(f"errors: {any(o.error for o in self.final.values())}")
        event(f"requests: {len(self.requests) // 4 * 4}+")
        assert stats.num_free_blocks == stats.num_total_blocks
        assert stats.num_running == stats.num_waiting == stats.num_swapped == 0
        assert self.core.kv.host_pool.num_free == self.config["num_host_blocks"]
        for request_id, (prompt, params) in self.requests.items():
            out = self.final[request_id]
            if request_id in self.aborted:
                continue
            assert _summary(out) == self._alone(prompt, params), request_id

    def _record_rest(self) -> None:
        for request_id, out in _drain(self.core, 3000).items():
            assert request_id not in self.final
            self.final[request_id] = out
        assert set(self.final) == set(self.requests)

    def _alone(self, prompt: list[int], params: SamplingParams) -> tuple:
        key = (tuple(sorted(self.config.items())), tuple(prompt), params)
        if key not in _ALONE:
            core = make_fake_core(**self.config)
            core.add_request("alone", prompt, params)
            _ALONE[key] = _summary(_drain(core, 3000)["alone"])
        return _ALONE[key]


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=25)
test_scheduler_state_machine = SchedulerMachine.TestCase
