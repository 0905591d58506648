"""The OpenAI-compatible ASGI app over a running engine.

`build_app` takes an engine that is already open and returns a plain ASGI app; it
owns no task and starts nothing, so it can be served by hypercorn (see
`corral.entrypoints.serve`) or driven in-process by a test client. The engine's
lifetime belongs to whoever opened it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from corral.engine import AsyncEngine
from corral.entrypoints.api_server import add_generate_route
from corral.entrypoints.errors import APIError, install_error_handlers
from corral.entrypoints.metrics import CONTENT_TYPE, ServerMetrics
from corral.entrypoints.middleware import APIKeyMiddleware, ASGIApp, BodyLimitMiddleware
from corral.entrypoints.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from corral.entrypoints.responses import (
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
)
from corral.entrypoints.serving import ServingContext
from corral.entrypoints.serving_chat import create_chat_completion, render_chat
from corral.entrypoints.serving_completion import create_completion
from corral.entrypoints.tool_parsers import get_tool_parser


class LoadLoRAAdapterRequest(BaseModel):
    """``POST /v1/load_lora_adapter`` (vLLM's body)."""

    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    """``POST /v1/unload_lora_adapter`` (vLLM's body; the id, if given, is not needed)."""

    lora_name: str
    lora_int_id: int | None = None


DEFAULT_MAX_BODY_SIZE = 4 * 2**20
"""Largest request body accepted (bytes); larger ones get 413."""


def package_version() -> str:
    """The installed corral's version (its package metadata), as ``/version`` and
    ``corral --version`` report it."""
    return importlib.metadata.version("corral")


async def make_context(
    engine: AsyncEngine,
    *,
    model_path: str,
    served_model_names: list[str] | None = None,
    tool_call_parser: str | None = None,
    enable_auto_tool_choice: bool = False,
    lora_modules: Sequence[tuple[str, str]] = (),
    allow_runtime_lora_updating: bool = False,
) -> ServingContext:
    """The handlers' view of an open engine.

    Args:
        engine: An open `corral.engine.AsyncEngine` (it must have a tokenizer and a
            model config, as one from `open_engine` has).
        model_path: The model the engine serves.
        served_model_names: Names clients may use in ``model``; defaults to ``model_path``.
        tool_call_parser: The registered tool-call parser that reads ``tool_choice:
            "auto"`` answers (see `corral.entrypoints.tool_parsers`).
        enable_auto_tool_choice: Serve ``tool_choice: "auto"`` (needs ``tool_call_parser``).
        lora_modules: (name, path) of the LoRA adapters to serve (the engine needs
            ``enable_lora``); each is read now.
        allow_runtime_lora_updating: Offer ``POST /v1/load_lora_adapter`` and
            ``/v1/unload_lora_adapter``.

    Raises:
        ValueError: The engine has no tokenizer or no model config; an unknown parser;
            auto tool choice without a parser; a bad LoRA adapter.
    """
    check_tool_options(tool_call_parser, enable_auto_tool_choice)
    tokenizer = await engine.get_tokenizer()
    model_config = await engine.get_model_config()
    if tokenizer is None or model_config is None:
        raise ValueError("engine: the server needs an engine with a tokenizer and a model config")
    names = list(served_model_names or [model_path])
    if not all(names):
        raise ValueError(f"served_model_names must be non-empty strings, got {names!r}")
    lora_enabled = engine.max_loras > 0
    if (lora_modules or allow_runtime_lora_updating) and not lora_enabled:
        raise ValueError("lora_modules: LoRA is not enabled (start with --enable-lora)")
    ctx = ServingContext(
        engine=engine,
        tokenizer=tokenizer,
        model_path=model_path,
        served_model_names=names,
        max_model_len=int(model_config.max_model_len),
        vocab_size=int(model_config.vocab_size),
        metrics=ServerMetrics(engine.stats, names[0], engine.replica_stats),
        tool_parser=None if tool_call_parser is None else get_tool_parser(tool_call_parser)(),
        enable_auto_tool_choice=enable_auto_tool_choice,
        allow_runtime_lora_updating=allow_runtime_lora_updating,
    )
    if lora_enabled:
        ctx.metrics = ServerMetrics(
            engine.stats,
            names[0],
            engine.replica_stats,
            lora_names=lambda: ctx.lora_names,
            max_lora=engine.max_loras,
        )
    for lora_name, lora_path in lora_modules:
        try:
            await ctx.load_lora(lora_name, lora_path)
        except APIError as exc:
            raise ValueError(f"lora_modules: {exc.message}") from None
    return ctx


def check_tool_options(tool_call_parser: str | None, enable_auto_tool_choice: bool) -> None:
    """Refuse an unknown parser name, and auto tool choice without a parser (as vLLM).

    Raises:
        ValueError: Naming the option at fault.
    """
    if tool_call_parser is not None:
        get_tool_parser(tool_call_parser)
    if enable_auto_tool_choice and tool_call_parser is None:
        raise ValueError("enable_auto_tool_choice: needs a tool_call_parser (--tool-call-parser)")


def build_app(
    ctx: ServingContext, *, api_key: str | None = None, max_body_size: int = DEFAULT_MAX_BODY_SIZE
) -> ASGIApp:
    """The ASGI app answering the OpenAI-compatible endpoints over ``ctx``'s engine.

    Args:
        ctx: From `make_context`.
        api_key: When set, every ``/v1/`` request needs ``Authorization: Bearer <api_key>``.
        max_body_size: Requests with a larger body (bytes) are answered 413.
    """
    app = FastAPI(title="corral", version=package_version())
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        # 200 while some replica serves; with several replicas the body says which
        # are alive and why the others died.
        status = 200 if ctx.engine.is_running else 503
        replicas = ctx.engine.replica_health()
        if len(replicas) == 1:
            return Response(status_code=status)
        nodes = ctx.engine.replica_nodes()
        body = {
            "replicas": {
                name: {"alive": error is None, "error": error, "node": nodes[name]}
                for name, error in replicas.items()
            }
        }
        return JSONResponse(body, status_code=status)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": package_version()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> ModelList:
        cards = [
            ModelCard(id=name, root=ctx.model_path, max_model_len=ctx.max_model_len)
            for name in ctx.served_model_names
        ]
        cards += [
            ModelCard(
                id=name,
                root=lora.lora_path,
                parent=ctx.served_model_names[0],
                max_model_len=ctx.max_model_len,
            )
            for name, lora in ctx.lora_modules.items()
        ]
        return ModelList(data=cards)

    if ctx.allow_runtime_lora_updating:

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> Response:
            await ctx.load_lora(body.lora_name, body.lora_path)
            return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added.")

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> Response:
            await ctx.unload_lora(body.lora_name)
            return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed.")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(ctx, body, request.receive)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(ctx, body, request.receive)

    add_generate_route(app, ctx)  # vLLM's simple demo API, POST /generate

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        ctx.model_name(body.model)
        if body.messages is not None:
            text = render_chat(ctx, body.messages, body.add_generation_prompt, body.tools)
            tokens = ctx.tokenizer(text, add_special_tokens=False).input_ids
        else:
            tokens = ctx.tokenizer(
                body.prompt, add_special_tokens=body.add_special_tokens
            ).input_ids
        return TokenizeResponse(count=len(tokens), max_model_len=ctx.max_model_len, tokens=tokens)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        ctx.model_name(body.model)
        ctx.encode(body.tokens, field="tokens")
        return DetokenizeResponse(prompt=ctx.tokenizer.decode(body.tokens))

    asgi: Any = BodyLimitMiddleware(app, max_body_size)
    if api_key is not None:
        asgi = APIKeyMiddleware(asgi, api_key)
    return asgi
