"""The ``corral`` command: ``serve``, ``generate`` and ``bench``.

Engine options are generated from `AsyncEngineArgs` (one ``--option`` per field,
its docstring as help); ``generate``'s sampling options likewise from
`SamplingParams`. Nothing trusts remote code unless ``--trust-remote-code`` is
given, and ``serve`` binds 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

import corral
from corral.config import AsyncEngineArgs
from corral.default_model import DEFAULT_SERVED_NAME, default_model_path
from corral.entrypoints.cli_args import add_attrs_options, collect
from corral.entrypoints.openai_server import DEFAULT_MAX_BODY_SIZE
from corral.entrypoints.serve import LOOPS, ServerSettings, run_server
from corral.errors import CorralError
from corral.sampling_params import SamplingParams

# Sampling fields that make no sense for one completion streamed to a terminal, or
# that have no command-line form; ``seed`` is the engine's option of the same name.
_GENERATE_SKIP = (
    "n", "best_of", "use_beam_search", "logprobs", "prompt_logprobs", "logits_processors", "seed",
)  # fmt: skip
_BENCHMARKS = ("throughput", "serving")


_MODEL_HELP = (
    "Path of a Hugging Face model folder (or a model id in the local Hugging Face cache). "
    "Default: the embedded storyteller model (corral.default_model)."
)


def _engine_options(parser: argparse.ArgumentParser) -> list[str]:
    parser.add_argument("model", nargs="?", default=None, help=_MODEL_HELP)
    group = parser.add_argument_group("engine options (corral.config.AsyncEngineArgs)")
    return ["model", *add_attrs_options(group, AsyncEngineArgs, skip=("model",))]


def build_parser() -> argparse.ArgumentParser:
    """The ``corral`` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(prog="corral", description=corral.__doc__)
    parser.add_argument("--version", action="version", version=f"corral {corral.__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default: INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="Serve an OpenAI-compatible HTTP API.", description="Serve an "
        "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, "
        "/health, /metrics, /tokenize, /detokenize, /version).",
    )  # fmt: skip
    engine_fields = _engine_options(serve)
    server = serve.add_argument_group("server options")
    server.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1).")
    server.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000).")
    server.add_argument(
        "--api-key", default=None, help="Require 'Authorization: Bearer KEY' on /v1/."
    )
    server.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="Event loop (default: asyncio)."
    )
    server.add_argument(
        "--served-model-name", nargs="+", default=None, metavar="NAME",
        help="Model names clients may use; the first is reported (default: the model path).",
    )  # fmt: skip
    server.add_argument(
        "--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
        help="After SIGINT/SIGTERM, how long in-flight requests may run on (default: 30).",
    )  # fmt: skip
    server.add_argument(
        "--max-request-body-size", type=int, default=DEFAULT_MAX_BODY_SIZE, metavar="BYTES",
        help=f"Larger request bodies get 413 (default: {DEFAULT_MAX_BODY_SIZE}).",
    )  # fmt: skip
    serve.set_defaults(handler=_serve, engine_fields=engine_fields)

    generate = commands.add_parser(
        "generate", help="Stream one completion to the terminal.",
        description="Generate a completion of PROMPT and stream its text to stdout. "
        "With one positional argument, it is the prompt and the embedded default model "
        "answers (corral generate \"Once upon a time\").",
    )  # fmt: skip
    engine_fields = _engine_options(generate)
    generate.add_argument("prompt", nargs="?", default=None, help="The prompt text.")
    sampling = generate.add_argument_group("sampling options (corral.SamplingParams)")
    # vLLM's default of 16 tokens cuts a story short; a terminal wants a whole one.
    sampling_fields = add_attrs_options(
        sampling, SamplingParams, skip=_GENERATE_SKIP, defaults={"max_tokens": 256}
    )
    generate.set_defaults(
        handler=_generate, engine_fields=engine_fields, sampling_fields=sampling_fields,
        log_requests=False, disable_log_stats=True,
    )  # fmt: skip

    bench = commands.add_parser(
        "bench", help="Run a benchmark from benchmarks/.",
        description="Run benchmarks/<NAME>.py with the remaining arguments.",
    )  # fmt: skip
    bench.add_argument("name", choices=_BENCHMARKS, help="Which benchmark.")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="Arguments for the benchmark.")
    bench.set_defaults(handler=_bench)
    return parser


def _engine_args(namespace: argparse.Namespace) -> AsyncEngineArgs:
    if namespace.model is None:
        namespace.model = default_model_path()
    return AsyncEngineArgs(**collect(namespace, namespace.engine_fields))


def _default_names(namespace: argparse.Namespace) -> tuple[str, ...]:
    # The embedded model is served under a short name rather than its install path.
    return (DEFAULT_SERVED_NAME,) if namespace.model is None else ()


def _serve(namespace: argparse.Namespace) -> int:
    settings = ServerSettings(
        host=namespace.host,
        port=namespace.port,
        api_key=namespace.api_key,
        loop=namespace.loop,
        served_model_names=tuple(namespace.served_model_name or _default_names(namespace)),
        shutdown_timeout=namespace.shutdown_timeout,
        max_body_size=namespace.max_request_body_size,
    )
    run_server(settings, _engine_args(namespace))
    return 0


def _generate(namespace: argparse.Namespace) -> int:
    from corral.engine import open_engine

    if namespace.prompt is None:
        # `corral generate PROMPT`: the one positional is the prompt, not a model.
        if namespace.model is None:
            raise ValueError("generate: give a PROMPT (and optionally a MODEL before it)")
        namespace.model, namespace.prompt = None, namespace.model
    params = SamplingParams(**collect(namespace, namespace.sampling_fields))
    engine_args = _engine_args(namespace)

    async def main() -> None:
        async with open_engine(engine_args) as engine:
            async with engine.generate(namespace.prompt, params) as stream:
                shown = 0
                async for output in stream:
                    text = output.outputs[0].text
                    sys.stdout.write(text[shown:])
                    sys.stdout.flush()
                    shown = len(text)
        sys.stdout.write("\n")

    anyio.run(main)
    return 0


def benchmark_script(name: str) -> Path:
    """The benchmark script ``benchmarks/<name>.py`` of the source tree.

    Raises:
        FileNotFoundError: The script does not exist (the benchmarks ship with the
            source tree, not with an installed wheel, and some are not written yet).
    """
    root = Path(corral.__file__).resolve().parents[2]
    script = root / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"bench {name}: {script} does not exist; the benchmarks live in the corral source "
            "tree (run from a checkout), and this one may not be written yet"
        )
    return script


def _bench(namespace: argparse.Namespace) -> int:
    script = benchmark_script(namespace.name)
    return subprocess.call([sys.executable, str(script), *namespace.args])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corral`` console script; returns the exit status."""
    namespace = build_parser().parse_args(argv)
    logging.basicConfig(
        level=namespace.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(namespace.handler(namespace))
    except (ValueError, CorralError, FileNotFoundError) as exc:
        print(f"corral {namespace.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
