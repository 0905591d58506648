"""Getting a Ray cluster: clear errors when Ray is missing or the cluster unreachable."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from corral.distributed.ray_utils import init_ray
from corral.errors import DistributedError


def test_import_corral_does_not_import_ray() -> None:
    code = (
        "import sys, corral, corral.distributed, corral.engine, corral.config\n"
        "assert 'ray' not in sys.modules, 'corral imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import ray` raise ImportError.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DistributedError, match=r"pip install corral\[ray\]") as info:
        init_ray(None)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_address_fails_fast_naming_ray_start() -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"ray start --head") as info:
        init_ray(address)
    assert address in str(info.value)
    assert time.monotonic() - start < 10
    assert info.value.__suppress_context__


def test_malformed_address_is_refused() -> None:
    with pytest.raises(DistributedError, match="not an address"):
        init_ray("no-port-here")


def test_offline_llm_refuses_ray_arguments() -> None:
    from corral.errors import NotSupportedError
    from corral.llm import LLM

    for kwargs in ({"engine_use_ray": True}, {"data_parallel_size": 2}):
        with pytest.raises(NotSupportedError, match="open_engine"):
            LLM("unused", **kwargs)
