"""Helpers of the server tests: a tiny random-weight Llama with a freshly trained tokenizer,
`corral serve` processes over it, and the app driven in-process.

The model folder is built once per session: a byte-level BPE tokenizer trained
here (with an EOS token and a minimal chat template) saved as a
``PreTrainedTokenizerFast``, next to a 2-layer ``LlamaConfig`` model saved with
``save_pretrained``. Servers are real subprocesses of the ``corral`` CLI on a free
port of 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corral.engine import AsyncEngine, open_engine
from corral.entrypoints.openai_server import DEFAULT_MAX_BODY_SIZE, build_app, make_context

CORPUS = [
    "The quick brown fox jumps over the lazy dog. ",
    "Once upon a time a small engine served many users at once. ",
    "Structured concurrency keeps every task inside a nursery. ",
    "Grüße aus Köln: ünïcödé und 日本語 😀. ",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MAX_MODEL_LEN = 256
SERVED_NAME = "tiny-llama"


def build_tiny_model(folder: Path) -> None:
    """Save a tokenizer and a random-weight 2-layer Llama in ``folder``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    hf_tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A ``corral serve`` subprocess; ``url`` is its base URL once it answers /health."""

    def __init__(self, model: Path, *extra: str, loop: str = "asyncio") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable, "-m", "corral.entrypoints.cli", "serve", str(model),
            "--port", str(self.port), "--loop", loop, "--served-model-name", SERVED_NAME,
            "--max-model-len", str(MAX_MODEL_LEN), "--num-kv-blocks", "1024",
            "--block-size", "8", "--dtype", "float32", "--no-log-requests", *extra,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # A file, not a pipe: nobody reads the log while the server runs, and a full
        # pipe would block the server.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx2.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")
        # One request before the tests: the first step loads (or builds) the native
        # extension, which would otherwise land inside a test's timing.
        warm_up = {"prompt": "warm up", "max_tokens": 1}
        left = max(deadline - time.monotonic(), 1.0)
        response = httpx2.post(f"{self.url}/v1/completions", json=warm_up, timeout=left)
        response.raise_for_status()

    final_output = ""

    def output(self) -> str:
        """What the server logged so far."""
        if self.log.closed:
            return self.final_output
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (unless it has exited already), wait, and return the exit code.

        The log stays readable in ``final_output``.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if not self.log.closed:
                self.final_output = self.output()
                self.log.close()


@asynccontextmanager
async def open_app(
    model: Path, *, api_key: str | None = None, max_body_size: int = DEFAULT_MAX_BODY_SIZE
) -> AsyncIterator[tuple[httpx2.AsyncClient, AsyncEngine]]:
    """The app over an engine on ``model``, driven in-process through ASGI."""
    async with open_engine(
        model=str(model),
        max_model_len=MAX_MODEL_LEN,
        num_kv_blocks=64,
        block_size=8,
        dtype="float32",
        log_requests=False,
        disable_log_stats=True,
    ) as engine:
        ctx = await make_context(engine, model_path=str(model), served_model_names=[SERVED_NAME])
        app = build_app(ctx, api_key=api_key, max_body_size=max_body_size)
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://corral") as client:
            yield client, engine
