"""Joining or starting the Ray cluster a distributed engine runs on.

Ray is an optional dependency (``pip install corral[ray]``): it is imported here,
on first use, and every failure to get a cluster becomes a `DistributedError`
whose message says what to do, instead of a traceback from deep inside Ray.
"""

from __future__ import annotations

import os
import socket
from types import ModuleType

from corral.errors import DistributedError

# Engine actors are named in this namespace, so that tools (and tests) can find them
# with ``ray.get_actor(name, namespace=RAY_NAMESPACE)``.
RAY_NAMESPACE = "corral"

# How long to wait for a TCP answer from a cluster's address before giving up.
# Ray itself retries for a minute or more against an address nobody listens on.
_CONNECT_TIMEOUT_S = 5.0


def import_ray() -> ModuleType:
    """Return the ``ray`` module.

    Raises:
        DistributedError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise DistributedError(
            "Ray is not installed, and this engine needs it (engine_use_ray, "
            "data_parallel_size > 1 or a Ray executor): install it with "
            "`pip install corral[ray]`"
        ) from None
    return ray


def local_cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def init_ray(address: str | None) -> None:
    """Connect this process to a Ray cluster, once; later calls keep the connection.

    Args:
        address: The cluster to join (``"host:port"``, ``"auto"`` for the cluster
            `ray start` runs on this machine, or a ``ray://`` client address). None
            joins the cluster named by the ``RAY_ADDRESS`` environment variable if it
            is set, else starts a local Ray instance sized to this process's CPUs.

    Raises:
        DistributedError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = import_ray()
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address is None:
        # Ray reads RAY_ADDRESS itself; an empty one must not make it look for a cluster.
        os.environ.pop("RAY_ADDRESS", None)
        try:
            ray.init(
                num_cpus=local_cpu_count(),
                namespace=RAY_NAMESPACE,
                include_dashboard=False,
                log_to_driver=False,
            )
        except Exception as exc:
            raise DistributedError(
                f"could not start a local Ray instance: {type(exc).__name__}: {exc}. "
                "Check `ray status`, or start a cluster with `ray start --head` and pass "
                "its address as ray_address"
            ) from None
        return
    try:
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
    except Exception as exc:
        raise DistributedError(
            f"could not join the Ray cluster at ray_address={address!r}: "
            f"{type(exc).__name__}: {exc}. Start it with `ray start --head` on its head "
            "node (and `ray start --address=<head>:6379` on the others), or pass "
            "ray_address=None to start a local Ray instance"
        ) from None


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` address where nothing listens."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DistributedError(
            f"ray_address={address!r} is not an address: give host:port (e.g. "
            "127.0.0.1:6379), 'auto' or a ray:// address"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise DistributedError(
            f"cannot reach the Ray cluster at ray_address={address!r} ({exc}). Start it "
            "with `ray start --head --port=<port>` on that host, or pass ray_address=None "
            "to start a local Ray instance"
        ) from None
