"""Helpers of the tool-calling tests: the server app over the embedded default model
(whose chat template offers tools), driven in-process by the official ``openai``
client, and a tool set small enough for the model's 512-token context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai

from corral.default_model import DEFAULT_SERVED_NAME, default_model_path
from corral.engine import open_engine
from corral.entrypoints.openai_server import build_app, make_context

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Oslo", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET"]}},
                "required": ["zone"],
            },
        },
    },
]
PARAMETERS = {
    "get_weather": WEATHER_PARAMETERS,
    "get_time": TOOLS[1]["function"]["parameters"],
}
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
MODEL = DEFAULT_SERVED_NAME


@asynccontextmanager
async def open_client(
    *, tool_call_parser: str | None = "hermes", enable_auto_tool_choice: bool = True
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An ``openai.AsyncOpenAI`` client talking to the app over ASGI (no socket)."""
    async with open_engine(
        model=default_model_path(),
        num_kv_blocks=256,
        block_size=16,
        dtype="float32",
        log_requests=False,
        disable_log_stats=True,
    ) as engine:
        ctx = await make_context(
            engine,
            model_path=default_model_path(),
            served_model_names=[MODEL],
            tool_call_parser=tool_call_parser,
            enable_auto_tool_choice=enable_auto_tool_choice,
        )
        transport = httpx2.ASGITransport(app=build_app(ctx))
        async with (
            httpx2.AsyncClient(transport=transport, base_url="http://corral/v1") as http,
            openai.AsyncOpenAI(
                base_url="http://corral/v1", api_key="unused", http_client=http, max_retries=0
            ) as client,
        ):
            yield client
