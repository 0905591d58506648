"""Shared test configuration: both anyio backends, hypothesis profiles."""

import os

import pytest
from hypothesis import HealthCheck, settings

# The session-wide Ray instance and the engine_use_ray parametrization (issue 14).
pytest_plugins = ("tests.distributed.ray_helpers",)

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return request.param
