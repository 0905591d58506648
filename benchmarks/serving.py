"""Online serving benchmark: Poisson arrivals against an OpenAI-compatible server.

The method is vLLM's ``benchmark_serving``: requests are sent at a given request
rate with gamma-distributed gaps (burstiness 1.0 makes them exponential, i.e. a
Poisson process; ``inf`` sends all at once), each one a streamed
``/v1/completions`` call, and the client timestamps every SSE event. Per rate it
reports request and token throughput, TTFT (time to the first text), TPOT (time
per output token after the first), ITL (gaps between streamed events) and E2E
latency: mean, median and p99, plus errors and requests whose output length was not
the one asked for.

The workload is seeded: prompt lengths drawn uniformly from 32..512 tokens, output
lengths from 64..256. Prompts are words of the benchmark model's word-level
tokenizer (one word is one token, so the server's own tokenizer gives exactly the
drawn length; the usage chunk confirms it). End of sequence is disabled so every
request generates exactly its drawn output length: corral gets vLLM's
``ignore_eos``; ``transformers serve`` gets a per-request generation config with no
EOS token.

With ``--launch`` the script starts the servers itself (subprocesses on free ports
of 127.0.0.1 over the same model folder, same thread count), a fresh warmed-up one
per rate and server, rate by rate, so corral and its peer are measured in the same
run with the same arrivals, minutes apart::

    python benchmarks/serving.py --launch corral transformers --threads 1 \\
        --num-requests 50 --rates 0.1 0.2 0.3 0.4 \\
        --out docs/serving_results.json --plot docs/serving_latency.png

or against a server already running::

    python benchmarks/serving.py --base-url http://127.0.0.1:8000 --model NAME

``--make-model DIR`` saves the benchmark model (a Llama with vocab 32000, hidden
512, intermediate 1408, 8 layers, 8 heads, 4 KV heads, float32, random weights from
a fixed seed) and its tokenizer in DIR. ``--quick`` shrinks model and workload to a
smoke run (8 requests at one rate against a 2-layer model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import numpy as np

STANDARD_MODEL = {
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
TINY_MODEL = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
MAX_MODEL_LEN = 1024
# Ids 0..2 are special tokens; prompt words are drawn from the rest.
FIRST_WORD_ID = 3
# The same paged KV cache for both servers: 4096 blocks of 16 tokens (65536 token
# slots, 1 GiB for the standard model), room for about 85 requests of the longest kind.
KV_BLOCK_SIZE = 16
KV_NUM_BLOCKS = 4096
TTFT_BOUND_S = 2.0
SERVERS = ("corral", "transformers")


def make_model(folder: Path, *, tiny: bool = False, seed: int = 0) -> None:
    """Save the benchmark Llama (random weights from ``seed``) and its tokenizer.

    The tokenizer is word-level over the whole vocabulary (``w3`` ... ``w31999``,
    split on whitespace) rather than a trained BPE: random weights produce
    gibberish anyway, and with one token per word a prompt of N words is exactly N
    tokens for any server, which a BPE over generated text does not guarantee.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    shape = TINY_MODEL if tiny else STANDARD_MODEL
    vocab_size = shape["vocab_size"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2} | {
        f"w{i}": i for i in range(FIRST_WORD_ID, vocab_size)
    }
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Metaspace-free word decoding: tokens joined by single spaces.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    config = transformers.LlamaConfig(
        **shape,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        dtype="float32",
    )
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)


@dataclass(frozen=True)
class Workload:
    """The shape of the request mix (token counts are inclusive ranges)."""

    num_requests: int
    prompt_len: tuple[int, int]
    output_len: tuple[int, int]
    vocab_size: int
    seed: int


@dataclass(frozen=True)
class Request:
    prompt: str
    prompt_len: int
    output_len: int


def sample_requests(workload: Workload) -> list[Request]:
    """Seeded prompts of random words and their output lengths."""
    rng = np.random.default_rng(workload.seed)
    requests = []
    for _ in range(workload.num_requests):
        prompt_len = int(rng.integers(workload.prompt_len[0], workload.prompt_len[1] + 1))
        output_len = int(rng.integers(workload.output_len[0], workload.output_len[1] + 1))
        words = rng.integers(FIRST_WORD_ID, workload.vocab_size, size=prompt_len)
        requests.append(Request(" ".join(f"w{w}" for w in words), prompt_len, output_len))
    return requests


def arrival_times(num: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``num`` requests at ``rate`` per second.

    Gaps are gamma-distributed with shape ``burstiness`` and mean ``1 / rate``, as in
    vLLM: burstiness 1.0 is a Poisson process, lower is burstier. The same seed gives
    the same arrivals to every server.
    """
    if math.isinf(rate):
        return [0.0] * num
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num)
    # The first request goes at once; the gap drawn before it would only shift all.
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


def request_body(backend: str, model: str, request: Request) -> dict[str, Any]:
    """A streamed greedy completion that must produce exactly ``output_len`` tokens."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.output_len,
        "temperature": 0.0,
        "stream": True,
    }
    if backend == "transformers":
        # transformers serve rejects vLLM's ``ignore_eos`` and ignores
        # ``stream_options`` (it always ends with a usage chunk); an EOS id of -1
        # disables stopping in its continuous batching.
        body["generation_config"] = json.dumps(
            {"eos_token_id": -1, "do_sample": False, "max_new_tokens": request.output_len}
        )
    else:
        body["ignore_eos"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Result:
    """What the client saw of one request (times in seconds)."""

    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    expected_prompt_tokens: int = 0
    expected_output_tokens: int = 0


async def send(
    client: httpx2.AsyncClient, url: str, body: dict[str, Any], request: Request
) -> Result:
    """Stream one completion of ``request`` and timestamp its events."""
    result = Result(expected_prompt_tokens=request.prompt_len,
                    expected_output_tokens=request.output_len)  # fmt: skip
    start = time.perf_counter()
    last = start
    events = 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                event = json.loads(data)
                if "error" in event:
                    result.error = f"stream error: {str(event['error'])[:200]}"
                    return result
                choices = event.get("choices") or []
                if choices and choices[0].get("text"):
                    if events == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    events += 1
                usage = event.get("usage")
                if usage:
                    result.prompt_tokens = usage["prompt_tokens"]
                    result.output_tokens = usage["completion_tokens"]
    except (httpx2.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    result.latency = time.perf_counter() - start
    if events == 0:
        result.error = "no text streamed"
    elif result.output_tokens == 0:
        result.error = "no usage chunk"
    else:
        result.ok = True
    return result


async def run_rate(
    base_url: str,
    backend: str,
    model: str,
    requests: list[Request],
    rate: float,
    *,
    burstiness: float,
    seed: int,
    max_duration: float,
) -> tuple[list[Result], float]:
    """Send ``requests`` with Poisson arrivals at ``rate``; return results and wall time.

    Requests still running after ``max_duration`` seconds are cancelled and count
    as errors, so one overloaded rate cannot hold the run forever.
    """
    url = f"{base_url}/v1/completions"
    times = arrival_times(len(requests), rate, burstiness, seed)
    results = [Result(error="cancelled after --max-duration") for _ in requests]
    # Every request gets its own connection at once: a pool limit would queue
    # requests in the client and hide the server's queueing from TTFT.
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx2.Timeout(max_duration, connect=30.0)

    async def one(i: int) -> None:
        results[i] = await send(client, url, request_body(backend, model, requests[i]), requests[i])

    start = time.perf_counter()
    async with httpx2.AsyncClient(limits=limits, timeout=timeout) as client:
        with anyio.move_on_after(max_duration):
            async with anyio.create_task_group() as tg:
                for i, at in enumerate(times):
                    await anyio.sleep(max(0.0, start + at - time.perf_counter()))
                    tg.start_soon(one, i)
    return results, time.perf_counter() - start


def _stats(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """Mean, median and p99 in milliseconds (None when there is nothing to measure)."""
    if not values:
        return {"mean": None, "median": None, "p99": None}
    array = np.asarray(values) * scale
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "p99": float(np.percentile(array, 99)),
    }


def summarize(rate: float, results: list[Result], duration: float) -> dict[str, Any]:
    """vLLM-style metrics of one rate."""
    done = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    return {
        "request_rate": "inf" if math.isinf(rate) else rate,
        "num_requests": len(results),
        "completed": len(done),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "output_len_mismatches": sum(r.output_tokens != r.expected_output_tokens for r in done),
        "prompt_len_mismatches": sum(r.prompt_tokens != r.expected_prompt_tokens for r in done),
        "duration_s": duration,
        "total_prompt_tokens": sum(r.prompt_tokens for r in done),
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "ttft_ms": _stats([r.ttft for r in done]),
        "tpot_ms": _stats(tpot),
        "itl_ms": _stats([gap for r in done for gap in r.itl]),
        "e2el_ms": _stats([r.latency for r in done]),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(kind: str, model_path: Path, port: int, max_model_len: int) -> list[str]:
    """The command line that serves ``model_path`` on ``port`` (same KV cache shape)."""
    if kind == "corral":
        return [
            sys.executable, "-m", "corral.entrypoints.cli", "serve", str(model_path),
            "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len),
            "--block-size", str(KV_BLOCK_SIZE), "--num-kv-blocks", str(KV_NUM_BLOCKS),
            "--no-log-requests", "--disable-log-stats",
        ]  # fmt: skip
    cli = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    return [
        cli, "serve", str(model_path), "--continuous-batching", "--host", "127.0.0.1",
        "--port", str(port), "--device", "cpu", "--dtype", "float32",
        "--cb-block-size", str(KV_BLOCK_SIZE), "--cb-num-blocks", str(KV_NUM_BLOCKS),
        "--log-level", "warning",
    ]  # fmt: skip


class ServerUnavailable(RuntimeError):
    """A server could not be started here; the message says why."""


@dataclass
class Launched:
    """A server subprocess that answers /health at ``url``; ``log`` is its output so far."""

    url: str
    log: Any

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@contextmanager
def launched(command: list[str], threads: int, ready_timeout: float) -> Iterator[Launched]:
    """Run ``command`` (which must listen on the port in it), yield it once /health
    answers, and stop it with SIGTERM afterwards."""
    port = command[command.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    # Same threads for both servers; offline so that nothing reaches for the Hub.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    # A file, not a pipe: nobody reads the log while the server runs, and a full
    # pipe would block it.
    log = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise ServerUnavailable(f"{command[0]}: {exc}") from exc

    server = Launched(url, log)

    def tail() -> str:
        return server.log_text()[-2000:]

    try:
        started = time.monotonic()
        deadline = started + ready_timeout
        while True:
            if proc.poll() is not None:
                raise ServerUnavailable(f"exited with code {proc.returncode}:\n{tail()}")
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"no /health after {ready_timeout:.0f}s:\n{tail()}")
            try:
                if httpx2.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.5)
        print(f"[{Path(command[0]).name}] ready after {time.monotonic() - started:.1f}s",
              file=sys.stderr, flush=True)  # fmt: skip
        yield server
    finally:
        stopping = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"[{Path(command[0]).name}] stopped in {time.monotonic() - stopping:.1f}s",
              file=sys.stderr, flush=True)  # fmt: skip
        log.close()


def warm_up(base_url: str, backend: str, model: str, prompt_len: int) -> None:
    """Two concurrent requests with the longest prompt, so that lazy initialisation
    (transformers builds its continuous batching manager on the first request; first
    use of the large prefill shapes) is not charged to the first rate."""
    request = Request(" ".join(f"w{FIRST_WORD_ID + i}" for i in range(prompt_len)), prompt_len, 8)
    body = request_body(backend, model, request)

    async def go() -> list[Result]:
        results: list[Result] = [Result(), Result()]

        async def one(i: int) -> None:
            results[i] = await send(client, f"{base_url}/v1/completions", body, request)

        async with httpx2.AsyncClient(timeout=300.0) as client, anyio.create_task_group() as tg:
            for i in range(len(results)):
                tg.start_soon(one, i)
        return results

    for result in anyio.run(go):
        if not result.ok:
            raise ServerUnavailable(f"warm-up request failed: {result.error}")


def bench_rate(
    base_url: str,
    backend: str,
    model: str,
    rate: float,
    args: argparse.Namespace,
    requests: list[Request],
) -> dict[str, Any]:
    """One rate against one server, with the machine's load average around it (the
    box is shared: a busy neighbour shows up there)."""
    load_before = os.getloadavg()[0]
    results, duration = anyio.run(
        lambda: run_rate(
            base_url,
            backend,
            model,
            requests,
            rate,
            burstiness=args.burstiness,
            seed=args.seed,
            max_duration=args.max_duration,
        )
    )
    row = summarize(rate, results, duration)
    row["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    print(f"[{backend}] {_row_line(row)}", file=sys.stderr, flush=True)
    return row


def bench_launched(
    args: argparse.Namespace, model_path: Path, requests: list[Request]
) -> dict[str, Any]:
    """Every rate against every server of ``--launch``, rate by rate.

    Each (rate, server) pair gets a fresh server, warmed up, so the servers of one
    rate run minutes apart rather than a whole sweep apart: on a shared machine the
    neighbours' load drifts, and this keeps the comparison at each rate fair. A
    server that cannot start is recorded with the reason and skipped afterwards.
    """
    servers: dict[str, Any] = {}
    for kind in args.launch:
        command = server_command(kind, model_path, 0, args.max_model_len)
        servers[kind] = {"status": "ok", "threads": args.threads, "rates": []}
        servers[kind]["command"] = " ".join(command).replace("--port 0", "--port PORT")
    for rate in args.rates:
        for kind in args.launch:
            entry = servers[kind]
            if entry["status"] != "ok":
                continue
            command = server_command(kind, model_path, free_port(), args.max_model_len)
            try:
                with launched(command, args.threads, ready_timeout=300.0) as server:
                    warm_up(server.url, kind, str(model_path), args.prompt_len[1])
                    entry["rates"].append(
                        bench_rate(server.url, kind, str(model_path), rate, args, requests)
                    )
                    if kind == "transformers":
                        # It falls back to one-at-a-time generate for models it cannot
                        # batch; its request log says which path served us.
                        entry["continuous_batching"] = "CB: True" in server.log_text()
            except ServerUnavailable as exc:
                entry.update(status="unavailable", reason=str(exc), rates=[])
                print(f"[{kind}] could not run here: {exc}", file=sys.stderr)
    return servers


def _row_line(row: dict[str, Any]) -> str:
    def ms(stat: dict[str, float | None], key: str) -> str:
        return "-" if stat[key] is None else f"{stat[key]:.0f}"

    return (
        f"rate {row['request_rate']}: {row['completed']}/{row['num_requests']} ok, "
        f"{row['request_throughput']:.2f} req/s, {row['output_throughput']:.1f} tok/s, "
        f"TTFT p50/p99 {ms(row['ttft_ms'], 'median')}/{ms(row['ttft_ms'], 'p99')} ms, "
        f"TPOT p50 {ms(row['tpot_ms'], 'median')} ms, ITL p99 {ms(row['itl_ms'], 'p99')} ms"
    )


def _sustained(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finite rates where every request completed and p99 TTFT stayed under the bound."""
    return [
        row for row in rows
        if row["request_rate"] != "inf" and row["errors"] == 0
        and row["ttft_ms"]["p99"] is not None and row["ttft_ms"]["p99"] < TTFT_BOUND_S * 1000
    ]  # fmt: skip


def evaluate_target(servers: dict[str, Any]) -> dict[str, Any]:
    """Issue 7's target: at the peer's highest rate with p99 TTFT < 2 s, corral's p99
    TTFT is at most half the peer's, and corral sustains >= 3x that rate under the bound.

    Only the measured rates are known, so the sustained-rate ratio is a lower bound
    when corral kept the bound at the highest rate tried.
    """
    corral = servers.get("corral", {}).get("rates")
    peer = servers.get("transformers", {}).get("rates")
    if not corral or not peer:
        return {"evaluated": False, "reason": "needs results of both corral and transformers"}
    peer_ok = _sustained(peer)
    corral_ok = _sustained(corral)
    out: dict[str, Any] = {"evaluated": True, "ttft_bound_s": TTFT_BOUND_S}
    out["peer_max_rate"] = max((r["request_rate"] for r in peer_ok), default=None)
    out["corral_max_rate"] = max((r["request_rate"] for r in corral_ok), default=None)
    tried = [r["request_rate"] for r in corral if r["request_rate"] != "inf"]
    out["corral_max_rate_is_lower_bound"] = bool(tried) and out["corral_max_rate"] == max(tried)
    if out["peer_max_rate"] is None:
        out["reason"] = "the peer kept p99 TTFT under the bound at no measured rate"
        return out
    peer_row = next(r for r in peer if r["request_rate"] == out["peer_max_rate"])
    corral_row = next((r for r in corral if r["request_rate"] == out["peer_max_rate"]), None)
    if corral_row is not None and corral_row["ttft_ms"]["p99"] is not None:
        ratio = corral_row["ttft_ms"]["p99"] / peer_row["ttft_ms"]["p99"]
        out["p99_ttft_ratio_at_peer_max_rate"] = ratio
        out["p99_ttft_target_met"] = ratio <= 0.5
    if out["corral_max_rate"] is not None:
        out["sustained_rate_ratio"] = out["corral_max_rate"] / out["peer_max_rate"]
        out["sustained_rate_target_met"] = out["sustained_rate_ratio"] >= 3.0
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency and throughput against request rate, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        (axes[0][0], "ttft_ms", "TTFT (ms)"),
        (axes[0][1], "tpot_ms", "TPOT (ms)"),
        (axes[1][0], "itl_ms", "ITL (ms)"),
    ]
    labels = [str(r) for r in result["config"]["rates"]]
    for name, server in result["servers"].items():
        rows = server.get("rates")
        if not rows:
            continue
        x = [labels.index(str(r["request_rate"])) for r in rows]
        for ax, key, title in panels:
            (line,) = ax.plot(x, [r[key]["p99"] for r in rows], "o-", label=f"{name} p99")
            ax.plot(x, [r[key]["median"] for r in rows], "s--", color=line.get_color(),
                    label=f"{name} median")  # fmt: skip
            ax.set_title(title)
        axes[1][1].plot(x, [r["output_throughput"] for r in rows], "o-", label=name)
    axes[0][0].axhline(TTFT_BOUND_S * 1000, color="grey", linestyle=":", label="2 s bound")
    axes[1][1].set_title("output tokens/s")
    for ax in axes.flat:
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("request rate (req/s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax, _, _ in panels:
        ax.set_yscale("log")
    workload = result["config"]
    fig.suptitle(
        f"{workload['num_requests']} requests, prompt {workload['prompt_len']}, output "
        f"{workload['output_len']} tokens, Poisson arrivals; {result['machine']['cpu_count']} "
        "CPUs (shared)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs of the same workload at different rates.

    The servers' rows are pooled and sorted by rate and the target is evaluated
    again on the pool; ``merged_runs`` keeps which rates each run measured.
    """
    if len(results) == 1:
        return results[0]
    first = results[0]
    workload = first["config"]["workload"]
    seen: set[str] = set()
    for result in results:
        if result["config"]["workload"] != workload:
            raise SystemExit("--from-json: the runs measured different workloads")
        rates = {str(rate) for rate in result["config"]["rates"]}
        if rates & seen:
            raise SystemExit(f"--from-json: rates {sorted(rates & seen)} measured twice")
        seen |= rates

    def order(rate: float | str) -> float:
        return math.inf if rate == "inf" else float(rate)

    merged = {**first, "servers": {}}
    for result in results:
        for name, server in result["servers"].items():
            entry = merged["servers"].setdefault(name, {**server, "rates": []})
            entry["rates"] = entry["rates"] + server.get("rates", [])
    for entry in merged["servers"].values():
        entry["rates"].sort(key=lambda row: order(row["request_rate"]))
    rates = sorted({rate for r in results for rate in r["config"]["rates"]}, key=order)
    merged["config"] = {**first["config"], "rates": rates}
    merged["merged_runs"] = [{"rates": r["config"]["rates"]} for r in results]
    merged["target"] = evaluate_target(merged["servers"])
    return merged


def markdown_table(result: dict[str, Any]) -> str:
    """The per-rate numbers of every server as a Markdown table (milliseconds)."""

    def ms(stat: dict[str, float | None], key: str) -> str:
        return "-" if stat[key] is None else f"{stat[key]:.0f}"

    lines = [
        "| server | rate (req/s) | done | req/s | out tok/s | TTFT mean / p50 / p99 "
        "| TPOT mean / p50 / p99 | ITL mean / p50 / p99 | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, server in result["servers"].items():
        for row in server.get("rates", []):
            cells = [
                name,
                str(row["request_rate"]),
                f"{row['completed']}/{row['num_requests']}",
                f"{row['request_throughput']:.3f}",
                f"{row['output_throughput']:.1f}",
            ]
            for key in ("ttft_ms", "tpot_ms", "itl_ms"):
                cells.append(" / ".join(ms(row[key], k) for k in ("mean", "median", "p99")))
            load = row.get("loadavg_1min")
            cells.append("-" if load is None else f"{load[0]:.1f} → {load[1]:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for package in ("corral", "torch", "transformers", "httpx2"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _rate(text: str) -> float:
    return math.inf if text == "inf" else float(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_argument_group("which server")
    target.add_argument("--base-url", help="A running server, e.g. http://127.0.0.1:8000.")
    target.add_argument("--model", help="Model name in requests (default: the served path).")
    target.add_argument("--backend", choices=SERVERS, default="corral",
                        help="Request dialect of --base-url (default: corral, which is vLLM's).")  # fmt: skip
    target.add_argument("--launch", nargs="+", choices=SERVERS, default=None,
                        help="Start these servers in turn on --model-path and measure each.")  # fmt: skip
    target.add_argument("--model-path", type=Path,
                        help="Model folder for --launch (default: build the benchmark model "
                        "in a temporary folder).")  # fmt: skip
    target.add_argument("--make-model", type=Path, metavar="DIR",
                        help="Save the benchmark model and tokenizer in DIR and exit.")  # fmt: skip
    target.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="OMP_NUM_THREADS of launched servers (default: all CPUs).")  # fmt: skip
    load = parser.add_argument_group("workload")
    load.add_argument("--rates", type=_rate, nargs="+", default=None,
                      help="Request rates in req/s, 'inf' for all at once (default: 0.1 0.2 "
                      "0.3 0.4, sized for a busy 2-core CPU; --quick: 4).")  # fmt: skip
    load.add_argument("--num-requests", type=int, default=None, help="Per rate (default: 200).")
    load.add_argument("--burstiness", type=float, default=1.0,
                      help="Gamma shape of the gaps; 1.0 is Poisson (default: 1.0).")  # fmt: skip
    load.add_argument("--seed", type=int, default=0, help="Seed of prompts and arrivals.")
    load.add_argument("--max-duration", type=float, default=900.0,
                      help="Seconds per rate before unfinished requests are cancelled.")  # fmt: skip
    load.add_argument("--quick", action="store_true",
                      help="Smoke run: tiny model, 8 requests, short prompts and outputs.")  # fmt: skip
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="Write the JSON results here (also printed).")
    out.add_argument("--plot", type=Path, help="Write latency-vs-rate plots here (PNG).")
    out.add_argument("--table", type=Path, help="Write a Markdown table of the results here.")
    out.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                     help="Redraw --plot and --table from saved results, merging runs of "
                     "other rates (with --out, save the merge); run nothing.")  # fmt: skip
    args = parser.parse_args(argv)
    redraw = args.make_model is not None or args.from_json is not None
    if not redraw and (args.base_url is None) == (args.launch is None):
        parser.error("give exactly one of --base-url and --launch (or --make-model, --from-json)")
    if args.base_url and not args.model:
        parser.error("--base-url needs --model")
    quick = args.quick
    args.rates = args.rates or ([4.0] if quick else [0.1, 0.2, 0.3, 0.4])
    args.num_requests = args.num_requests or (8 if quick else 200)
    args.prompt_len = (8, 32) if quick else (32, 512)
    args.output_len = (8, 16) if quick else (64, 256)
    args.max_model_len = 256 if quick else MAX_MODEL_LEN
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.make_model is not None:
        make_model(args.make_model, tiny=args.quick)
        print(f"saved the benchmark model in {args.make_model}", file=sys.stderr)
        return None
    if args.from_json is not None:
        result = merge_results([json.loads(path.read_text()) for path in args.from_json])
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        _write_outputs(result, args)
        return result
    with tempfile.TemporaryDirectory(prefix="corral-serving-") as scratch:
        model_path = args.model_path
        if args.launch and model_path is None:
            model_path = Path(scratch) / "model"
            make_model(model_path, tiny=args.quick, seed=args.seed)
        vocab_size = (TINY_MODEL if args.quick else STANDARD_MODEL)["vocab_size"]
        if model_path is not None:
            vocab_size = json.loads((model_path / "config.json").read_text())["vocab_size"]
        workload = Workload(
            args.num_requests, args.prompt_len, args.output_len, vocab_size, args.seed
        )
        requests = sample_requests(workload)
        servers: dict[str, Any] = {}
        if args.base_url:
            warm_up(args.base_url, args.backend, args.model, args.prompt_len[1])
            rows = [
                bench_rate(args.base_url, args.backend, args.model, rate, args, requests)
                for rate in args.rates
            ]
            servers[args.backend] = {"status": "ok", "base_url": args.base_url, "rates": rows}
        if args.launch:
            servers.update(bench_launched(args, model_path, requests))
    result = {
        "benchmark": "serving",
        "method": "vLLM benchmark_serving: streamed /v1/completions, gamma arrivals",
        "config": {
            "rates": ["inf" if math.isinf(r) else r for r in args.rates],
            "burstiness": args.burstiness,
            "num_requests": args.num_requests,
            "prompt_len": list(args.prompt_len),
            "output_len": list(args.output_len),
            "seed": args.seed,
            "model": "tiny" if args.quick else STANDARD_MODEL | {"dtype": "float32"},
            "max_model_len": args.max_model_len,
            "kv_cache": {"block_size": KV_BLOCK_SIZE, "num_blocks": KV_NUM_BLOCKS},
            "workload": asdict(workload),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
        },
        "versions": _versions(),
        "servers": servers,
        "target": evaluate_target(servers),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    _write_outputs(result, args)
    return result


def _write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    if args.plot:
        plot(result, args.plot)
    if args.table:
        args.table.write_text(markdown_table(result))


if __name__ == "__main__":
    main()
