"""The exceptions corral raises, in one place so that users can catch them by type."""

from __future__ import annotations


class CorralError(Exception):
    """Base class of every error corral defines."""


class EngineDeadError(CorralError):
    """The engine loop has stopped for good after a step raised.

    Every live stream raises it with the original error chained as ``__cause__``,
    and every later call on the engine raises it at once. There is no restart.
    """


class NotSupportedError(CorralError, NotImplementedError):
    """A documented feature that corral does not implement yet.

    The message names the feature and, where one exists, the issue tracking it.
    """


class EngineClosedError(EngineDeadError):
    """The engine is not running: used outside its ``async with`` block."""


class NativeBuildError(CorralError, RuntimeError):
    """corral's C++/CUDA extension cannot be built here or its sources are missing.

    The message says what to install (a C++ compiler, ninja, the CUDA toolkit).
    """


class DistributedError(CorralError, RuntimeError):
    """A distributed engine cannot start: Ray is missing or its cluster unreachable.

    The message says what to do (install ``corral[ray]``, start the cluster, or
    fix ``ray_address``).
    """
