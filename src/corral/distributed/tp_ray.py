"""Tensor-parallel ranks as Ray actors (``distributed_executor_backend="ray"``).

Ranks 1 .. N-1 are actors in one placement group (packed onto as few nodes as fit);
rank 0 stays in the engine's process. Steps reach the actors as actor calls; the
ranks then meet in the layers' collectives, over the network when the actors run on
other nodes. Leaving the engine kills the actors and removes the placement group.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import torch

from corral.config import EngineArgs
from corral.distributed.ray_utils import import_ray, init_ray
from corral.distributed.tp_executor import (
    TensorParallelError,
    Workers,
    connect_driver,
)
from corral.distributed.tp_worker import COLLECTIVE_TIMEOUT, ShardWorker, rendezvous_store
from corral.errors import DistributedError

_PLACEMENT_TIMEOUT_S = 60.0
_STEP_TIMEOUT_S = COLLECTIVE_TIMEOUT.total_seconds() * 2


class RayShardWorker(ShardWorker):
    """A `ShardWorker` inside a Ray actor.

    A step that raises ends the actor's process: its peers are waiting in a collective
    that it will never join, and a closed connection fails them at once.
    """

    def __init__(self, threads: int, *args: Any) -> None:
        torch.set_num_threads(threads)
        super().__init__(*args)

    def step(self, payload: bytes) -> None:
        try:
            super().step(payload)
        except BaseException:
            sys.stderr.write(
                f"corral tensor-parallel worker rank {self.rank}:\n{traceback.format_exc()}"
            )
            sys.stderr.flush()
            os._exit(1)


class RayWorkers(Workers):
    """Ranks 1 .. N-1 as Ray actors in a placement group of ``args.ray_address``'s cluster.

    Raises:
        DistributedError: Ray is missing, its cluster unreachable, or the cluster lacks
            the CPUs (GPUs) for the ranks.
    """

    def __init__(self, args: EngineArgs, device: torch.device) -> None:
        init_ray(args.ray_address)
        ray = import_ray()
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        self._remove_placement_group = remove_placement_group
        world_size = args.tensor_parallel_size
        host = ray.util.get_node_ip_address()
        store = rendezvous_store(host, 0, world_size, is_master=True)
        gpus = 1 if device.type == "cuda" else 0
        bundle = {"CPU": 1.0, **({"GPU": 1.0} if gpus else {})}
        self.placement_group = placement_group([bundle] * (world_size - 1), strategy="PACK")
        self.actors: list[Any] = []
        self._pending: list[Any] = []
        try:
            ray.get(self.placement_group.ready(), timeout=_PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.shutdown(failed=True)
            raise DistributedError(
                f"tensor_parallel_size={world_size}: the Ray cluster has no room for "
                f"{world_size - 1} worker(s) of {bundle} (see `ray status`)"
            ) from None
        actor_class = ray.remote(num_cpus=1, num_gpus=gpus)(RayShardWorker)
        threads = torch.get_num_threads()
        for rank in range(1, world_size):
            strategy = PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=rank - 1
            )
            actor = actor_class.options(scheduling_strategy=strategy).remote(
                threads, args, rank, host, store.port, "cuda" if gpus else "cpu"
            )
            self.actors.append(actor)
        self._pending = [actor.join.remote() for actor in self.actors]
        self.group = connect_driver(store, world_size, device, self)
        self._pending = [actor.load.remote() for actor in self.actors]

    def _get(self, refs: list[Any], timeout: float) -> list[Any]:
        ray = self._ray
        try:
            return list(ray.get(refs, timeout=timeout))
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            diagnosis = self.diagnose()
            self.shutdown(failed=True)
            raise TensorParallelError(
                diagnosis or f"a tensor-parallel worker failed: {exc}"
            ) from exc

    def wait_loaded(self) -> None:
        self._get(self._pending, timeout=300.0)
        self._pending = []

    def allocate_kv_cache(self, num_blocks: int, num_host_blocks: int) -> None:
        refs = [a.allocate_kv_cache.remote(num_blocks, num_host_blocks) for a in self.actors]
        self._get(refs, timeout=300.0)

    def send_step(self, payload: bytes) -> None:
        self._pending = [actor.step.remote(payload) for actor in self.actors]

    def finish_step(self) -> None:
        self._get(self._pending, timeout=_STEP_TIMEOUT_S)
        self._pending = []

    def diagnose(self) -> str | None:
        # A dead actor fails the call it was running or was sent: the pending ones tell.
        ray = self._ray
        if not self._pending:
            return None
        ready, _ = ray.wait(self._pending, num_returns=len(self._pending), timeout=0)
        for rank, (actor, ref) in enumerate(zip(self.actors, self._pending, strict=False), 1):
            if ref not in ready:
                continue
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayError as exc:
                lines = str(exc).strip().splitlines()
                reason = lines[0].rstrip(".") if lines else type(exc).__name__
                return (
                    f"tensor-parallel worker rank {rank} (Ray actor {actor._actor_id.hex()}) "
                    f"died: {reason}"
                )
        return None

    def shutdown(self, failed: bool = False) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self.placement_group is not None:
            self._remove_placement_group(self.placement_group)
            self.placement_group = None
