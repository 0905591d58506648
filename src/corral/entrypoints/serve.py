"""``corral serve``: hypercorn serving the app, next to the engine, in one task tree.

Structure. A task group watches for SIGINT/SIGTERM; inside it the engine is opened
with `open_engine`, and hypercorn's ``serve`` runs inside the engine's block. We do not
open the engine in FastAPI's lifespan: hypercorn runs the lifespan protocol in a
task of its own and cancels it at shutdown, after the connections are gone, so
the engine's task group would be owned by a task the app does not control, and a
request cancelled at the graceful deadline would race the engine's exit. Here the
order is explicit: the engine outlives every request, and no engine task outlives
``serve``.

Shutdown. The first signal stops accepting connections; in-flight requests may
finish for up to ``shutdown_timeout`` seconds, after which hypercorn cancels
their handlers, and a cancelled handler aborts its engine request. Then the
engine block closes (aborting anything left) and the process exits 0. A second
signal cancels at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from typing import Any

import anyio
import anyio.abc
import attrs
import sniffio
from hypercorn.config import Config

from corral.config import AsyncEngineArgs
from corral.engine import open_engine
from corral.entrypoints.openai_server import (
    DEFAULT_MAX_BODY_SIZE,
    build_app,
    check_tool_options,
    make_context,
)

logger = logging.getLogger(__name__)

LOOPS = ("asyncio", "trio")
"""Event loops ``corral serve`` runs on (``--loop``)."""


class PortInUseError(OSError):
    """The address ``corral serve`` should listen on is taken by another socket."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is in use")
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` for a moment, as the server will, to learn now whether it can.

    With SO_REUSEADDR, as hypercorn binds, so that connections of an earlier server
    still in TIME_WAIT do not count as the port being in use. Port 0 (any free port)
    is always available. Another process may still take the port between this check
    and the server's bind; that bind then fails with the same error.

    Raises:
        PortInUseError: Another socket listens on (or holds) the address.
        OSError: The address cannot be bound for another reason (not a local address,
            a privileged port).
    """
    if port == 0:
        return
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUseError(host, port) from None
                raise


@attrs.frozen(kw_only=True)
class ServerSettings:
    """How ``corral serve`` listens; the engine's own arguments are `AsyncEngineArgs`.

    Attributes:
        host: Address to bind; 127.0.0.1 keeps the server local unless asked otherwise.
        port: TCP port.
        api_key: When set, ``/v1/`` requests need ``Authorization: Bearer <api_key>``.
        loop: Event loop: "asyncio" or "trio".
        served_model_names: Names clients may use as ``model``; the model path by default
            (the CLI serves the embedded model as "storyteller").
        shutdown_timeout: Seconds in-flight requests may take to finish after a signal.
        max_body_size: Largest request body in bytes (larger: 413).
        tool_call_parser: The tool-call parser for ``tool_choice: "auto"`` (e.g. "hermes").
        enable_auto_tool_choice: Serve ``tool_choice: "auto"`` (needs ``tool_call_parser``).
        lora_modules: (name, path) of the LoRA adapters served from the start.
        allow_runtime_lora_updating: Offer the load / unload adapter endpoints.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    loop: str = "asyncio"
    served_model_names: tuple[str, ...] = ()
    shutdown_timeout: float = 30.0
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()
    allow_runtime_lora_updating: bool = False

    def __attrs_post_init__(self) -> None:
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {self.loop!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not self.shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be non-negative, got {self.shutdown_timeout}")
        if self.max_body_size < 1:
            raise ValueError(f"max_body_size must be a positive integer, got {self.max_body_size}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty (leave it out to disable the check)")
        check_tool_options(self.tool_call_parser, self.enable_auto_tool_choice)


def _hypercorn_config(settings: ServerSettings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_timeout
    # Through logging, so that `--log-level` and its format apply to hypercorn too.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def _hypercorn_serve(app: object, config: Config, shutdown: anyio.Event) -> None:
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        asyncio.get_running_loop().set_exception_handler(_ignore_cancelled_connections)
        await asyncio_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]


def _ignore_cancelled_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # At the graceful deadline hypercorn cancels the connections still open; asyncio's
    # stream protocol then reports each cancelled connection task as an error with a
    # traceback. Those cancellations are the shutdown working as designed.
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _watch_signals(
    shutdown: anyio.Event,
    scope: anyio.CancelScope,
    timeout: float,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if shutdown.is_set():
                logger.warning("second %s: aborting in-flight requests now", name)
                scope.cancel()
                return
            logger.info("%s: shutting down (in-flight requests get up to %ss)", name, timeout)
            shutdown.set()


async def serve(settings: ServerSettings, engine_args: AsyncEngineArgs) -> None:
    """Open the engine and serve the API until SIGINT or SIGTERM (see the module docstring).

    The signal handlers are in place before the model loads: a signal during loading
    makes the server stop as soon as loading ends, a second one cancels at once.
    """
    shutdown = anyio.Event()
    config = _hypercorn_config(settings)
    async with anyio.create_task_group() as tg:
        await tg.start(_watch_signals, shutdown, tg.cancel_scope, settings.shutdown_timeout)
        async with open_engine(engine_args) as engine:
            ctx = await make_context(
                engine,
                model_path=engine_args.model,
                served_model_names=list(settings.served_model_names) or None,
                tool_call_parser=settings.tool_call_parser,
                enable_auto_tool_choice=settings.enable_auto_tool_choice,
                lora_modules=settings.lora_modules,
                allow_runtime_lora_updating=settings.allow_runtime_lora_updating,
            )
            app = build_app(ctx, api_key=settings.api_key, max_body_size=settings.max_body_size)
            # In a task of its own: hypercorn's asyncio serve returns with a cancellation
            # request still counted on its task (Python 3.11), which would turn the
            # exit of an enclosing task group into a CancelledError in the host task.
            async with anyio.create_task_group() as http:
                http.start_soon(_hypercorn_serve, app, config, shutdown)
        tg.cancel_scope.cancel()
    logger.info("server stopped")


def run_server(settings: ServerSettings, engine_args: AsyncEngineArgs) -> None:
    """Run `serve` on the event loop ``settings.loop`` names (blocks until shutdown).

    Raises:
        PortInUseError: The port was taken (checked by the caller before loading, it
            can still be taken meanwhile).
    """
    try:
        anyio.run(serve, settings, engine_args, backend=settings.loop)
    except BaseException as exc:
        if _address_in_use(exc):
            raise PortInUseError(settings.host, settings.port) from None
        raise


def _address_in_use(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_address_in_use(inner) for inner in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
