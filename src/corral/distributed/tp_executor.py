"""Tensor parallelism from the driver's side: rank 0 runs in the engine's own process,
next to the one scheduler, and the other ranks follow the steps it sends them.

Each step the driver packs the batch (`corral.distributed.tp_step`), hands it to every
worker, runs its own shard, and samples from the logits its shard gathered. The ranks
meet in the layers' collectives (gloo on CPU, NCCL on CUDA). Workers are local
processes (`MultiprocessWorkers`, backend "mp") or Ray actors (`RayWorkers` in
`corral.distributed.tp_ray`, backend "ray").

A dead rank breaks the collectives: the other ranks' pending collective fails at once
(closed connection), or after `COLLECTIVE_TIMEOUT` for a rank that hangs. The driver
then names the rank that died and shuts the others down; the engine dies with that error.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from corral.config import EngineArgs
from corral.core.interface import ModelRunnerOutput, SchedulerOutput
from corral.distributed.tp_step import pack_step
from corral.distributed.tp_worker import COLLECTIVE_TIMEOUT, connect_group, rendezvous_store
from corral.model.parallel_state import TensorParallelGroup
from corral.model.runner import ForwardStep, TorchModelRunner

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 300.0
"""Longest wait for a worker to start, connect or load its shard (a large checkpoint)."""


_DEATH_GRACE_S = 5.0
"""How long a failed step looks for the rank that died (its exit may show late)."""


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or failed; the message names it."""


def _hostname_for_workers() -> str:
    return "127.0.0.1"


def worker_device(device: torch.device, rank: int) -> str:
    """The device of ``rank`` on a machine where the ranks share the devices by index."""
    return f"cuda:{rank}" if device.type == "cuda" else "cpu"


class Workers(abc.ABC):
    """The ranks 1 .. N-1 of a tensor-parallel engine, as the driver (rank 0) sees them.

    Attributes:
        group: The driver's place in the ranks' process group.
    """

    group: TensorParallelGroup

    @abc.abstractmethod
    def wait_loaded(self) -> None:
        """Block until every worker loaded its shard (raise if one failed)."""

    @abc.abstractmethod
    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int) -> None:
        """Give every worker a KV cache of the driver's block count."""

    @abc.abstractmethod
    def send_step(self, payload: bytes) -> None:
        """Hand one packed step to every worker (returns without waiting for it)."""

    @abc.abstractmethod
    def finish_step(self) -> None:
        """Check the workers after the driver's own part of a step."""

    @abc.abstractmethod
    def diagnose(self) -> str | None:
        """Which worker died or failed, and how; None when all are alive."""

    @abc.abstractmethod
    def shutdown(self, failed: bool = False) -> None:
        """Stop every worker (idempotent); ``failed``: after an error."""

    def runner(self, *args: Any, **kwargs: Any) -> TensorParallelRunner:
        """Rank 0's runner over the workers, once they loaded their shards and allocated
        a KV cache like rank 0's (arguments as `TorchModelRunner`)."""
        runner = TensorParallelRunner(self, *args, **kwargs)
        self.wait_loaded()
        self.allocate_kv_cache(runner.kv_cache.num_blocks, runner.kv_cache.num_host_blocks)
        return runner

    def failure(self, cause: BaseException) -> BaseException:
        """The error to raise for a step that failed with ``cause``.

        A collective broken by a dead rank names that rank; the workers are shut down
        either way, since a group that lost a rank cannot run another step.
        """
        deadline = time.monotonic() + _DEATH_GRACE_S
        diagnosis = self.diagnose()
        # A killed rank's connections close as it dies; its exit may show a moment later.
        while diagnosis is None and time.monotonic() < deadline:
            time.sleep(0.05)
            diagnosis = self.diagnose()
        self.shutdown(failed=True)
        if diagnosis is not None:
            return TensorParallelError(f"{diagnosis} (the tensor-parallel group is broken)")
        text = str(cause)
        if isinstance(cause, RuntimeError) and any(
            m in text for m in ("gloo", "NCCL", "Timed out")
        ):
            return TensorParallelError(
                "a tensor-parallel collective failed while every worker is alive (one that "
                f"hangs fails it after {COLLECTIVE_TIMEOUT.total_seconds():.0f} s): {text}"
            )
        return cause


class TensorParallelRunner(TorchModelRunner):
    """Rank 0's runner: sends each step to the workers, runs its shard and samples.

    Args:
        workers: The other ranks.
        *args, **kwargs: As `TorchModelRunner` (the model is rank 0's shard).
    """

    def __init__(self, workers: Workers, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workers = workers

    def begin_step(self, step: ForwardStep) -> None:
        self.workers.send_step(pack_step(step))

    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        try:
            output = super().execute(scheduler_output)
            self.workers.finish_step()
        except Exception as exc:
            raise self.workers.failure(exc) from exc
        return output

    def shutdown(self) -> None:
        """Stop the worker ranks."""
        self.workers.shutdown()


def start_workers(args: EngineArgs, device: torch.device) -> Workers:
    """Start ranks 1 .. tensor_parallel_size-1 of ``args`` and connect the driver to them.

    The workers load their shards in the background; `Workers.wait_loaded` waits.

    Raises:
        DistributedError: for the "ray" backend when Ray is missing or unreachable.
        TensorParallelError: when a worker fails to start.
    """
    if args.executor_backend == "ray":
        from corral.distributed.tp_ray import RayWorkers

        return RayWorkers(args, device)
    return MultiprocessWorkers(args, device)


def connect_driver(
    store: Any, world_size: int, device: torch.device, workers: Workers
) -> TensorParallelGroup:
    """Rank 0's side of the connection, watching the workers while it waits.

    The group's constructor blocks until every rank joined; a worker that dies first
    would leave it waiting for the store's timeout, so it runs in a thread and a dead
    worker ends the wait at once.
    """
    result: list[Any] = []

    def connect() -> None:
        try:
            result.append(connect_group(store, 0, world_size, device))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=connect, name="corral-tp-connect", daemon=True)
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while thread.is_alive():
        thread.join(0.05)
        diagnosis = workers.diagnose()
        if diagnosis is not None or time.monotonic() > deadline:
            workers.shutdown(failed=True)
            raise TensorParallelError(
                f"{diagnosis or 'the workers did not connect in time'} "
                "while the tensor-parallel ranks were connecting"
            )
    if isinstance(result[0], BaseException):
        workers.shutdown(failed=True)
        raise TensorParallelError(f"the tensor-parallel ranks could not connect: {result[0]}")
    group: TensorParallelGroup = result[0]
    return group


class _Pool:
    def __init__(self) -> None:
        self.idle: list[tuple[subprocess.Popen[bytes], Any]] = []


_pool: _Pool | None = None


@contextlib.contextmanager
def keep_worker_processes() -> Iterator[None]:
    """Within this block, "mp" workers outlive their engine and serve the next one.

    Starting a worker costs a fresh interpreter and torch's import (seconds on a busy
    machine). A test suite or benchmark that opens many short-lived tensor-parallel
    engines in one process opens this block once: a closed engine's workers drop
    their shards and wait, idle, for the next engine. A worker of an engine that
    failed is never kept. On exit the idle workers stop.
    """
    global _pool
    if _pool is not None:
        yield
        return
    _pool = pool = _Pool()
    try:
        yield
    finally:
        _pool = None
        for process, conn in pool.idle:
            _stop_processes([process], [conn], kill=True)


def _start_process() -> tuple[subprocess.Popen[bytes], Any]:
    if _pool is not None:
        while _pool.idle:
            process, conn = _pool.idle.pop()
            if process.poll() is None:
                return process, conn
    parent, child = multiprocessing.Pipe()
    command = [sys.executable, "-m", "corral.distributed.tp_worker", str(child.fileno())]
    process = subprocess.Popen(command, pass_fds=[child.fileno()])
    child.close()
    return process, parent


def _stop_processes(
    processes: list[subprocess.Popen[bytes]], conns: list[Any], kill: bool | list[bool]
) -> None:
    failed = kill if isinstance(kill, bool) else any(kill)
    pool = _pool
    if pool is not None and not failed:
        for process, conn in zip(processes, conns, strict=True):
            with contextlib.suppress(OSError, ValueError, EOFError):
                conn.send(("release",))
                if conn.poll(30.0) and conn.recv() == ("released",):
                    pool.idle.append((process, conn))
                    continue
            _stop_processes([process], [conn], kill=True)
        return
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("stop",))
        conn.close()
    deadline = time.monotonic() + 5.0
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class MultiprocessWorkers(Workers):
    """Ranks as local worker processes (the "mp" backend); commands go over pipes.

    Each worker is a fresh interpreter (``python -m corral.distributed.tp_worker``):
    forking a process that may hold threads and a CUDA context is unsafe, and
    multiprocessing's spawn would re-run a driver script that lacks a main guard.
    Each worker runs torch on as many threads as the driver does when it starts.
    """

    def __init__(self, args: EngineArgs, device: torch.device) -> None:
        world_size = args.tensor_parallel_size
        host = _hostname_for_workers()
        store = rendezvous_store(host, 0, world_size, is_master=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.conns: list[Any] = []
        self._failed: list[bool] = []
        self._finalizer = weakref.finalize(
            self, _stop_processes, self.processes, self.conns, self._failed
        )
        self._errors: dict[int, str] = {}
        threads = torch.get_num_threads()
        for rank in range(1, world_size):
            process, conn = _start_process()
            self.processes.append(process)
            self.conns.append(conn)
            device_name = worker_device(device, rank)
            conn.send(("init", args, rank, host, store.port, device_name, threads))
        for rank in range(1, world_size):
            self._expect(rank, "started")
        self.group = connect_driver(store, world_size, device, self)

    def _expect(self, rank: int, what: str) -> None:
        conn = self.conns[rank - 1]
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not conn.poll(0.05):
            diagnosis = self.diagnose()
            if diagnosis is not None or time.monotonic() > deadline:
                self.shutdown(failed=True)
                raise TensorParallelError(
                    diagnosis or f"tensor-parallel worker rank {rank} did not answer in time"
                )
        message = self._receive(rank)
        if message[0] != what:
            diagnosis = self.diagnose()
            self.shutdown(failed=True)
            raise TensorParallelError(
                diagnosis or f"tensor-parallel worker rank {rank} sent {message[0]!r}"
            )

    def _receive(self, rank: int) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = self.conns[rank - 1].recv()
        except (EOFError, OSError):
            return ("gone",)
        if message[0] == "error":
            self._errors[rank] = message[1]
        return message

    def wait_loaded(self) -> None:
        for rank in range(1, len(self.processes) + 1):
            self._expect(rank, "ready")

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int) -> None:
        for conn in self.conns:
            conn.send(("kv", num_blocks, num_host_blocks))
        for rank in range(1, len(self.processes) + 1):
            self._expect(rank, "ready")

    def send_step(self, payload: bytes) -> None:
        for conn in self.conns:
            conn.send(("step", payload))

    def finish_step(self) -> None:
        # Workers answer a step only when it failed; the check costs one poll per worker.
        for rank, conn in enumerate(self.conns, start=1):
            if conn.poll():
                self._receive(rank)
                raise TensorParallelError(self.diagnose() or f"worker rank {rank} failed")

    def diagnose(self) -> str | None:
        for rank, (process, conn) in enumerate(zip(self.processes, self.conns, strict=True), 1):
            if rank not in self._errors:
                try:
                    if not conn.closed and conn.poll():
                        self._receive(rank)
                except (EOFError, OSError):
                    pass
            if rank in self._errors:
                last = self._errors[rank].strip().splitlines()[-1]
                return f"tensor-parallel worker rank {rank} (pid {process.pid}) failed: {last}"
            if process.poll() is not None:
                return (
                    f"tensor-parallel worker rank {rank} (pid {process.pid}) died "
                    f"with exit code {process.returncode}"
                )
        return None

    def shutdown(self, failed: bool = False) -> None:
        if failed:
            self._failed.append(True)
        self._finalizer()
