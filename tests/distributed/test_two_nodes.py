"""`corral serve` on a real two-node Ray cluster (two raylets on this machine, each
with its own CPU and a custom resource): one replica per node, answers the openai
client, survives the kill of one node's replica."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.server.server_helpers import SERVED_NAME, ServerProcess, build_tiny_model


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    response = httpx2.get(f"{server.url}/health", timeout=5.0)
    return response.status_code, response.json()


def kill_actor(address: str, name: str) -> None:
    """Kill an engine actor from another driver, as an operator (or a crash) would."""
    code = (
        "import ray\n"
        f"ray.init(address={address!r}, namespace='corral', log_to_driver=False)\n"
        f"ray.kill(ray.get_actor({name!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serve_places_a_replica_per_node_and_survives_one_kill(
    cluster: Any, tmp_path: Path
) -> None:
    build_tiny_model(tmp_path)
    server = ServerProcess(tmp_path, "--data-parallel-size", "2", "--ray-address", cluster.address)
    try:
        server.wait_ready()
        status, body = health(server)
        assert status == 200
        replicas = body["replicas"]
        nodes = {node.node_id for node in cluster.list_all_nodes()}
        assert {r["node"] for r in replicas.values()} == nodes  # one replica per node
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as client:
            for i in range(4):
                completion = client.completions.create(
                    model=SERVED_NAME, prompt=f"Once upon a time {i}", max_tokens=4
                )
                assert completion.choices[0].text is not None
            victim = sorted(replicas)[0]
            kill_actor(cluster.address, victim)
            deadline = time.monotonic() + 30
            while True:
                status, body = health(server)
                if not body["replicas"][victim]["alive"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == 200
            assert not body["replicas"][victim]["alive"]
            assert victim in body["replicas"][victim]["error"]
            for i in range(4):
                completion = client.completions.create(
                    model=SERVED_NAME, prompt=f"The quick brown fox {i}", max_tokens=4
                )
                assert completion.usage is not None and completion.usage.completion_tokens == 4
            metrics = httpx2.get(f"{server.url}/metrics", timeout=5.0).text
            assert f'replica="{victim}"' in metrics
            survivor = next(name for name in replicas if name != victim)
            kill_actor(cluster.address, survivor)
            deadline = time.monotonic() + 30
            while health(server)[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert health(server)[0] == 503
    finally:
        server.stop()
