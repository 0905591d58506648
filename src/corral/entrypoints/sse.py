"""Server-Sent Events responses whose producer is cancelled when the client leaves.

A producer is a coroutine function handed an ``emit`` callback; it runs inside a
task group next to a watcher of the connection. When the client disconnects the
watcher cancels the group, the cancellation reaches the producer wherever it
waits (typically in the engine stream's ``__anext__``), and leaving the engine
stream's ``async with`` aborts the request at once. No async generator is
involved, so no ``yield`` ever sits inside a cancel scope.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Emit = Callable[[Any], Awaitable[None]]
Producer = Callable[[Emit], Awaitable[None]]

DONE = "[DONE]"


def format_event(data: Any) -> bytes:
    """One SSE event: ``data: <json>`` (or the literal ``[DONE]``) and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (the request body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ProducerResponse(Response):
    """A streamed response fed by ``producer``, framed by :meth:`frame`.

    Args:
        producer: Called with ``emit``; each ``await emit(obj)`` sends one framed
            object. ``trailer`` (if any) follows when it returns.
        cleanup: Called (synchronously) when the response ends in any way, even
            before the producer started: it ends the engine streams the handler
            submitted, so that no request outlives its connection.
    """

    headers_of_body: tuple[tuple[bytes, bytes], ...] = ()
    trailer: Any = None

    def __init__(self, producer: Producer, cleanup: Callable[[], None]) -> None:
        # Not Response.__init__: it would declare a content-length for a body that
        # is not known yet.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(self.headers_of_body)
        self._producer = producer
        self._cleanup = cleanup

    def frame(self, data: Any) -> bytes:
        """The bytes that carry one emitted object."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(receive, send)
        finally:
            self._cleanup()

    async def _respond(self, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        lock = anyio.Lock()

        async def emit(data: Any) -> None:
            # Several producer tasks (one per prompt) may share the connection.
            async with lock:
                await send(
                    {"type": "http.response.body", "body": self.frame(data), "more_body": True}
                )

        disconnected = anyio.Event()

        async def watch() -> None:
            await wait_disconnect(receive)
            disconnected.set()
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await self._producer(emit)
            if self.trailer is not None:
                await emit(self.trailer)
            tg.cancel_scope.cancel()
        if not disconnected.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class EventStreamResponse(ProducerResponse):
    """``text/event-stream`` response (see `ProducerResponse`), ended by ``data: [DONE]``."""

    headers_of_body = (
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    )
    trailer = DONE

    def frame(self, data: Any) -> bytes:
        return format_event(data)
