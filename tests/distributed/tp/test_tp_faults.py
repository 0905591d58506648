"""A tensor-parallel worker that dies mid-generation kills the engine with an error
naming it, quickly, on both anyio backends (the Ray backend's case is in test_tp_parity,
sharing its engine)."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import pytest

from corral.distributed.tp_executor import TensorParallelError, Workers
from corral.engine import open_engine
from corral.errors import EngineDeadError
from corral.model.parallel_state import TensorParallelGroup
from corral.sampling_params import SamplingParams
from tests.distributed.tp.conftest import TensorParallelZoo

ENGINE = {"dtype": "float32", "num_kv_blocks": 256, "max_model_len": 512}
# Engine start (worker processes importing torch on a loaded machine) plus the 30 s
# the issue allows between the death and the error.
TIMEOUT = 120.0


@pytest.mark.anyio
async def test_a_killed_worker_fails_every_live_stream_naming_its_rank(
    tp_zoo: TensorParallelZoo,
) -> None:
    path = str(tp_zoo.path("llama"))
    errors: list[EngineDeadError] = []
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(TensorParallelError, match=r"worker rank 1 \(pid \d+\) died") as cause:
            async with open_engine(
                path, tensor_parallel_size=2, disable_log_stats=True, **ENGINE
            ) as engine:
                workers: Any = engine._core.runner.workers  # type: ignore[attr-defined]
                pid = workers.processes[0].pid

                streaming = [anyio.Event(), anyio.Event()]

                async def consume(index: int) -> None:
                    prompt = [3 + index, 7]
                    try:
                        async for _ in engine.generate(None, params, prompt_token_ids=prompt):
                            streaming[index].set()
                    except EngineDeadError as exc:
                        errors.append(exc)

                async with anyio.create_task_group() as tg:
                    for index in range(2):
                        tg.start_soon(consume, index)
                    for event in streaming:
                        await event.wait()
                    os.kill(pid, signal.SIGKILL)
                    killed_at = anyio.current_time()
                # Both streams ended (with the error) when the task group exits.
                assert anyio.current_time() - killed_at < 30.0
    assert f"pid {pid}" in str(cause.value)
    assert len(errors) == 2
    assert all(e.__cause__ is cause.value for e in errors)
    assert all("worker rank 1" in str(e) for e in errors)
    assert workers.processes[0].poll() is not None


@pytest.mark.anyio
async def test_leaving_the_block_stops_the_workers(tp_zoo: TensorParallelZoo) -> None:
    path = str(tp_zoo.path("llama"))
    params = SamplingParams(temperature=0.0, max_tokens=4)
    with anyio.fail_after(TIMEOUT):
        async with open_engine(
            path, tensor_parallel_size=2, disable_log_stats=True, **ENGINE
        ) as engine:
            workers: Any = engine._core.runner.workers  # type: ignore[attr-defined]
            async for _ in engine.generate(None, params, prompt_token_ids=[3, 7]):
                pass
            assert workers._finalizer.alive
        # Stopped at exit (here: handed back to the suite's pool of idle workers),
        # not left holding their shards until the runner is garbage-collected.
        assert not workers._finalizer.alive


class _AliveWorkers(Workers):
    """Workers that are all alive: a failed step is not explained by a death."""

    group = TensorParallelGroup()
    stopped = False

    def wait_loaded(self) -> None: ...
    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int) -> None: ...
    def send_step(self, payload: bytes) -> None: ...
    def finish_step(self) -> None: ...

    def diagnose(self) -> str | None:
        return None

    def shutdown(self, failed: bool = False) -> None:
        self.stopped = failed


def test_a_timed_out_collective_with_every_worker_alive_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("corral.distributed.tp_executor._DEATH_GRACE_S", 0.1)
    workers = _AliveWorkers()
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 30000ms")
    error = workers.failure(timeout)
    assert isinstance(error, TensorParallelError)
    assert "every worker is alive" in str(error) and "after 30 s" in str(error)
    assert workers.stopped
    # A failure of the driver's own code stays what it is.
    bug = ValueError("a bug in rank 0")
    assert workers.failure(bug) is bug
