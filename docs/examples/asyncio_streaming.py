"""corral inside an asyncio program: stream, time out, and cancel a task group of requests.

The engine runs on anyio, so the same code works under asyncio; here the timeout
is an anyio ``CancelScope`` with a deadline and the group an ``asyncio.TaskGroup``.

Usage::

    python docs/examples/asyncio_streaming.py [PATH_TO_HF_MODEL_FOLDER]

Without a model folder, the embedded storyteller model (corral.default_model) answers.
"""

from __future__ import annotations

import asyncio
import sys

import anyio

from corral.default_model import default_model_path
from corral.engine import AsyncEngine, open_engine
from corral.sampling_params import SamplingParams


async def stream_one(engine: AsyncEngine) -> None:
    """Print a completion as it grows. Outputs are cumulative: print the new part."""
    params = SamplingParams(temperature=0.0, max_tokens=24)
    shown = 0
    async with engine.generate("Once upon a time", params) as stream:
        async for output in stream:
            text = output.outputs[0].text
            print(text[shown:], end="", flush=True)
            shown = len(text)
    print(f"\n[streamed: finish_reason={output.outputs[0].finish_reason}]")


async def with_deadline(engine: AsyncEngine) -> None:
    """A deadline is a cancel scope: when it expires, the request is aborted for us.

    The deadline is set once the first token arrives (loading and the first step take
    longer on a slow machine than a fixed deadline could allow), so that it cuts a
    request in the middle of its 400 tokens.
    """
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    received = 0
    with anyio.CancelScope() as scope:
        async with engine.generate("There was a little fox", params) as stream:
            async for output in stream:
                if received == 0:
                    scope.deadline = anyio.current_time() + 0.2
                received = len(output.outputs[0].token_ids)
    print(f"[deadline: timed out={scope.cancelled_caught} after {received} of 400 tokens]")


class _Answered(Exception):
    """Raised by the first request to finish; it cancels the rest of the task group."""


async def first_answer_wins(engine: AsyncEngine) -> None:
    """Race several prompts; the task group's cancellation aborts the other requests."""
    prompts = ["Once upon a time", "The rabbit", "In a big forest", "A bird"]
    # Different lengths, so that exactly one finishes first.
    lengths = [40, 8, 24, 32]

    async def ask(prompt: str, max_tokens: int) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        async for output in engine.generate(prompt, params):
            if output.finished:
                raise _Answered(prompt)

    try:
        async with asyncio.TaskGroup() as group:
            for prompt, max_tokens in zip(prompts, lengths, strict=True):
                group.create_task(ask(prompt, max_tokens))
    except* _Answered as answered:
        winner = answered.exceptions[0].args[0]
    print(f"[race: {winner!r} answered first; the other requests were aborted]")


async def main(model: str) -> None:
    async with open_engine(model=model, log_requests=False, disable_log_stats=True) as engine:
        await stream_one(engine)
        await with_deadline(engine)
        await first_answer_wins(engine)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else default_model_path()))
