"""OpenAI-style error responses, and the exception handlers that produce them.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``
with the matching HTTP status, ``type`` named as vLLM names it (``BadRequestError``,
``NotFoundError``, ...) and ``param`` naming the offending field where there is one.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.entrypoints.responses import ErrorInfo, ErrorResponse
from corral.errors import EngineDeadError, NotSupportedError

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

# Validation messages of corral's value types, of the engine and of the request
# models start with the field's name ("top_p must be in (0, 1]", "prompt: must not
# be empty", "sampling_params.best_of=5 exceeds max_num_seqs=4").
_FIELD_PREFIX = re.compile(r"^(?:sampling_params\.)?([A-Za-z_][A-Za-z0-9_.]*)(?::| must |=)")


class APIError(Exception):
    """An error answered with an OpenAI error body.

    Args:
        status: The HTTP status.
        message: What went wrong, for the client.
        param: The request field at fault, if any.
    """

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def bad_request(exc: ValueError) -> APIError:
    """A 400 for a value error whose message names the field (see `field_of`)."""
    message = str(exc)
    return APIError(400, message, field_of(message))


def field_of(message: str) -> str | None:
    """The field name a validation message starts with, or None."""
    match = _FIELD_PREFIX.match(message)
    return match.group(1) if match else None


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response for an error."""
    body = ErrorResponse(
        error=ErrorInfo(
            message=message, type=_TYPES.get(status, "APIError"), param=param, code=status
        )
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error body alone, for errors that arrive in the middle of a stream."""
    info = ErrorInfo(message=message, type=_TYPES.get(status, "APIError"), param=param, code=status)
    return ErrorResponse(error=info).model_dump()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "json_invalid":
        # Its location is a character offset, not a field.
        return f"body: {message} ({(error.get('ctx') or {}).get('error', 'invalid JSON')})", None
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, BaseException):
        # A model validator's own message already names its field.
        message = str(cause)
        return message, field_of(message) or (".".join(loc) or None)
    if not loc:
        if error.get("type") in ("missing", "model_attributes_type"):
            return f"body: {message}", None
        return message, field_of(message)
    param = ".".join(loc)
    return f"{param}: {message}", param


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise to an OpenAI error body."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc.status, exc.message, exc.param)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(
            exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
        )

    async def on_not_supported(request: Request, exc: Exception) -> JSONResponse:
        return error_response(400, str(exc), field_of(str(exc)))

    async def on_dead(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, f"the engine has died and cannot serve requests: {exc}")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(NotSupportedError, on_not_supported)
    app.add_exception_handler(EngineDeadError, on_dead)
