"""corral inside a trio program: stream, time out, and cancel a nursery of requests.

Usage::

    python docs/examples/trio_streaming.py [PATH_TO_HF_MODEL_FOLDER]

Without a model folder, the embedded storyteller model (corral.default_model) answers.
"""

from __future__ import annotations

import sys

import trio

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
    with trio.CancelScope() as scope:
        async with engine.generate("There was a little fox", params) as stream:
            async for output in stream:
                if received == 0:
                    scope.deadline = trio.current_time() + 0.2
                received = len(output.outputs[0].token_ids)
    print(f"[deadline: timed out={scope.cancelled_caught} after {received} of 400 tokens]")


async def first_answer_wins(engine: AsyncEngine) -> None:
    """Race several prompts; cancelling the nursery aborts every request still running."""
    prompts = ["Once upon a time", "The rabbit", "In a big forest", "A bird"]
    # Different lengths, so that exactly one finishes first.
    lengths = [40, 8, 24, 32]
    winner: list[str] = []

    async def ask(prompt: str, max_tokens: int, nursery: trio.Nursery) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        async for output in engine.generate(prompt, params):
            if output.finished:
                winner.append(prompt)
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for prompt, max_tokens in zip(prompts, lengths, strict=True):
            nursery.start_soon(ask, prompt, max_tokens, nursery)
    print(f"[race: {winner[0]!r} answered first; the other requests were aborted]")


async def main(model: str) -> None:
    async with open_engine(model=model, log_requests=False, disable_log_stats=True) as engine:
        await stream_one(engine)
        await with_deadline(engine)
        await first_answer_wins(engine)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else default_model_path())
