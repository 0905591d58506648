"""Starting and stopping the Ray actors that hold engine cores.

`start_engine_actors` places one `EngineCoreActor` per data-parallel replica with
a placement group (one CPU bundle per replica, spread over the cluster's nodes when
it has several) and waits until every core is built; `EngineActors.shutdown` kills
the actors and removes the placement group. Both block: the async front door runs
them in a worker thread.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from corral.errors import DistributedError

from .ray_utils import import_ray, init_ray
from .remote_core import CONCURRENCY_GROUPS, CoreFactory, EngineCoreActor, RemoteCore

# Seconds to wait for the cluster to grant the replicas' CPUs.
_PLACEMENT_TIMEOUT_S = 60.0


@attrs.define
class EngineActors:
    """The actors of one engine and the placement group that reserves their CPUs."""

    placement_group: Any
    handles: list[Any] = attrs.field(factory=list)
    cores: list[RemoteCore] = attrs.field(factory=list)

    def shutdown(self) -> None:
        """Kill every actor and release the placement group (idempotent)."""
        ray = import_ray()
        from ray.util.placement_group import remove_placement_group

        for handle in self.handles:
            # Killing an actor that already died is a no-op.
            ray.kill(handle, no_restart=True)
        self.handles.clear()
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None


def cpus_per_replica(num_replicas: int) -> int:
    """Each replica's share of the cluster's CPUs (at least 1)."""
    ray = import_ray()
    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1, total // num_replicas)


def start_engine_actors(
    factory: CoreFactory,
    *,
    num_replicas: int,
    ray_address: str | None,
    num_cpus: int | None = None,
) -> EngineActors:
    """Join or start the cluster (see `init_ray`), then build ``num_replicas`` cores,
    each in its own actor with ``num_cpus`` CPUs (None: an even share of the cluster).

    The actors are named ``corral-engine-<id>-<replica>``. On any failure the actors
    already started are killed and the placement group removed.

    Raises:
        DistributedError: Ray is missing, the cluster unreachable, or too small.
        Exception: what building a core raised in its actor (a bad model path...).
    """
    init_ray(ray_address)
    ray = import_ray()
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cpus = num_cpus or cpus_per_replica(num_replicas)
    bundles = [{"CPU": float(cpus)} for _ in range(num_replicas)]
    group = placement_group(bundles, strategy="SPREAD")
    actors = EngineActors(group)
    try:
        try:
            ray.get(group.ready(), timeout=_PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            raise DistributedError(
                f"the Ray cluster cannot place {num_replicas} engine replica(s) of {cpus} "
                f"CPU(s) each within {_PLACEMENT_TIMEOUT_S:.0f} s (it has "
                f"{ray.cluster_resources().get('CPU', 0)} CPUs): lower data_parallel_size "
                "or add nodes"
            ) from None
        remote_class = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(EngineCoreActor)
        engine_id = uuid.uuid4().hex[:8]
        names = []
        for index in range(num_replicas):
            name = f"corral-engine-{engine_id}-{index}"
            handle = remote_class.options(
                name=name,
                num_cpus=cpus,
                max_restarts=0,
                # The core's calls, one at a time; `watch` and the prepare calls
                # have their own threads.
                max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=index
                ),
            ).remote(factory)
            names.append(name)
            actors.handles.append(handle)
        for name, handle in zip(names, actors.handles, strict=True):
            actors.cores.append(RemoteCore(handle, name, _describe(ray, handle)))
    except BaseException:
        actors.shutdown()
        raise
    return actors


def _describe(ray: Any, handle: Any) -> Any:
    from ray.exceptions import RayTaskError

    try:
        return ray.get(handle.describe.remote())
    except RayTaskError as exc:
        # Building the core raised (a bad model...): that error, not Ray's wrapper.
        cause = exc.cause
        if isinstance(cause, Exception):
            raise cause from None
        raise
