"""ASGI middleware in front of the app: the request body size limit and the API key.

Both are plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that a streaming
response and the client's disconnect pass through untouched: the handler below
must see ``http.disconnect`` to abort its engine request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from corral.entrypoints.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(
    send: Send, status: int, message: str, headers: list[Any] | None = None
) -> None:
    """Answer with an OpenAI error body, at the ASGI level."""
    body = json.dumps(error_body(status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answers 413 to a request whose body exceeds ``max_body_size`` bytes.

    The body is read (at most ``max_body_size`` bytes of it) before the app runs and
    replayed to it; afterwards the app's ``receive`` is the server's again, so that
    it still hears ``http.disconnect``.
    """

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        if max_body_size < 1:
            raise ValueError(f"max_body_size must be a positive integer, got {max_body_size}")
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body exceeds the limit of {self.max_body_size} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_size:
                await send_error(send, 413, too_large)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                await send_error(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class APIKeyMiddleware:
    """Requires ``Authorization: Bearer <api_key>`` on every ``/v1/`` path (401 otherwise).

    Other paths (``/health``, ``/metrics``, ``/version``, ``/tokenize``) stay open, as in vLLM.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
        if not hmac.compare_digest(given, self._expected):
            message = "invalid or missing API key (send 'Authorization: Bearer <key>')"
            await send_error(send, 401, message, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)
