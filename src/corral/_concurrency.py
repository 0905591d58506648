"""`FirstError`: re-raising a task group's first failure as it is.

anyio (and trio) wrap whatever escapes a task group in an ExceptionGroup. The
engine's block and the server's handlers promise their callers the original
exception instead (so that ``except ValueError`` and the HTTP error handlers see
it), and keep that promise the same way: catch inside the group, re-raise after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class FirstError:
    """Keeps the first `Exception` raised in the blocks it guards, to re-raise later.

    Only `Exception` is caught: a cancellation (and any other `BaseException`) goes
    through untouched, so the task group still sees it.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None

    @contextmanager
    def catch(self, cancel: anyio.CancelScope | None = None) -> Iterator[None]:
        """Record an `Exception` leaving the block (the first one wins) and cancel
        ``cancel``, if given, so that the group's other tasks stop."""
        try:
            yield
        except Exception as exc:
            if self.error is None:
                self.error = exc
            if cancel is not None:
                cancel.cancel()

    def reraise(self) -> None:
        """Raise the recorded exception, if any (call once the task group has exited)."""
        if self.error is not None:
            raise self.error
