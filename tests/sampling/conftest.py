"""The sampling tests use the model tests' tiny-model zoo."""

from tests.model.conftest import zoo as zoo

__all__ = ["zoo"]
