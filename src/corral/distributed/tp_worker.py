"""One tensor-parallel rank other than the driver's: its shard of the model, its KV
cache shard, and the loop that runs every step the driver sends.

The same `ShardWorker` runs in a local process (`worker_process_main`, the "mp"
backend) and inside a Ray actor (the "ray" backend).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import sys
import traceback
from typing import Any

import torch

from corral.config import EngineArgs
from corral.distributed.tp_step import unpack_step
from corral.model.kv_cache import PagedKVCache
from corral.model.parallel_state import TensorParallelGroup
from corral.model.runner import run_forward

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=30)
"""How long a collective waits for a rank that neither answers nor dies (a dead rank's
closed connection fails the collective at once)."""


def rendezvous_store(host: str, port: int, world_size: int, *, is_master: bool) -> Any:
    """The key-value store where the ranks meet (the driver hosts it; ``port`` 0 picks one)."""
    import torch.distributed as dist

    return dist.TCPStore(
        host,
        port,
        world_size,
        is_master,
        timeout=datetime.timedelta(seconds=120),
        wait_for_workers=False,
    )


def connect_group(
    store: Any, rank: int, world_size: int, device: torch.device
) -> TensorParallelGroup:
    """Connect the ranks that meet at ``store``: gloo on CPU, NCCL on CUDA.

    Returns once every rank connected. The process group is created directly (not as
    torch.distributed's default group), so that one process can hold the groups of
    several engines.
    """
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = COLLECTIVE_TIMEOUT
        group: Any = dist.ProcessGroupNCCL(store, rank, world_size, options)
    else:
        group = dist.ProcessGroupGloo(store, rank, world_size, COLLECTIVE_TIMEOUT)
    return TensorParallelGroup(rank, world_size, group)


class ShardWorker:
    """Rank ``rank`` (> 0) of a tensor-parallel engine.

    Args:
        args: The engine's arguments (model, dtype, load format, ...).
        rank: This rank.
        host: The driver's rendezvous host.
        port: The driver's rendezvous port.
        device: Where this rank's shard lives.
    """

    def __init__(self, args: EngineArgs, rank: int, host: str, port: int, device: str) -> None:
        self.args = args
        self.rank = rank
        self.host = host
        self.port = port
        self.device = torch.device(device)
        self.group: TensorParallelGroup | None = None
        self.model: Any = None
        self.kv_cache: PagedKVCache | None = None

    def join(self) -> None:
        """Connect to the other ranks (returns once all of them, the driver too, joined)."""
        world_size = self.args.tensor_parallel_size
        store = rendezvous_store(self.host, self.port, world_size, is_master=False)
        self.group = connect_group(store, self.rank, world_size, self.device)

    def load(self) -> None:
        """Build this rank's shard and read its slices of the checkpoint."""
        from corral.model.loader import load_model

        assert self.group is not None, "join() first"
        self.model, self.model_config = load_model(
            self.args.model,
            dtype=self.args.dtype,
            kv_cache_dtype=self.args.kv_cache_dtype,
            load_format=self.args.load_format,
            max_model_len=self.args.max_model_len,
            device=str(self.device),
            seed=self.args.seed,
            tp=self.group,
        )

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int) -> None:
        """This rank's KV cache shard: the driver's block ids, this rank's heads."""
        self.kv_cache = PagedKVCache(
            self.model_config, self.args.block_size, num_blocks, num_host_blocks, self.device
        )

    def step(self, payload: bytes) -> None:
        """Run one step the driver packed (block moves, forward, this rank's logits part)."""
        assert self.kv_cache is not None, "allocate_kv_cache() first"
        run_forward(self.model, self.kv_cache, unpack_step(payload, self.device))


def _next(conn: Any) -> tuple[Any, ...]:
    try:
        message: tuple[Any, ...] = conn.recv()
    except EOFError:  # the driver is gone
        return ("stop",)
    return message


def worker_process_main(conn: Any) -> None:
    """The "mp" backend's worker process: commands from the driver's pipe, until it closes.

    ``("init", args, rank, host, port, device, threads)`` sets up a shard (replies
    ``("started",)`` before connecting, ``("ready",)`` once loaded); then come
    ``("step", payload)``, ``("kv", num_blocks, num_host_blocks)`` (replies
    ``("ready",)``), and ``("release",)`` (drops the shard, replies ``("released",)``,
    and waits for the next "init": see `keep_worker_processes`) or ``("stop",)``.
    Any failure replies ``("error", text)`` and ends the process, which fails the
    driver's next collective at once (a worker that stayed would leave it waiting).
    """
    rank = -1
    try:
        while True:
            message = _next(conn)
            if message[0] != "init":
                return
            _, args, rank, host, port, device, threads = message
            torch.set_num_threads(threads)
            worker = ShardWorker(args, rank, host, port, device)
            conn.send(("started",))
            worker.join()
            worker.load()
            conn.send(("ready",))
            while (message := _next(conn))[0] in ("step", "kv"):
                if message[0] == "step":
                    worker.step(message[1])
                else:
                    worker.allocate_kv_cache(message[1], message[2])
                    conn.send(("ready",))
            del worker
            if message[0] != "release":
                return
            gc.collect()
            conn.send(("released",))
    except BaseException:
        text = traceback.format_exc()
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", text))
        sys.stderr.write(f"corral tensor-parallel worker rank {rank}:\n{text}")
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    # Started by `MultiprocessWorkers` as ``python -m corral.distributed.tp_worker FD``:
    # a fresh interpreter that, unlike multiprocessing's spawn, does not re-import the
    # driver's __main__ (a script without a main guard would run again in every rank).
    from multiprocessing.connection import Connection

    worker_process_main(Connection(int(sys.argv[1])))
