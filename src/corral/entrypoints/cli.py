"""The ``corral`` command: ``serve``, ``generate`` and ``bench``.

Engine options are generated from `AsyncEngineArgs` (one ``--option`` per field,
its docstring as help); ``generate``'s sampling options likewise from
`SamplingParams`. Nothing trusts remote code unless ``--trust-remote-code`` is
given, and ``serve`` binds 127.0.0.1 unless ``--host`` says otherwise.

Every mistake a user can make on the command line ends in one line on stderr that
says what went wrong, never a traceback: a usage error exits 2 (with the
subcommand's usage), a failure (a port in use) exits 1, Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import anyio

import corral
from corral.config import AsyncEngineArgs
from corral.default_model import DEFAULT_SERVED_NAME, default_model_path
from corral.entrypoints.cli_args import add_attrs_options, collect
from corral.entrypoints.openai_server import DEFAULT_MAX_BODY_SIZE, package_version
from corral.entrypoints.serve import LOOPS, PortInUseError, ServerSettings, check_port, run_server
from corral.entrypoints.tool_parsers import tool_parser_names
from corral.errors import CorralError
from corral.sampling_params import SamplingParams

# Sampling fields that make no sense for one completion streamed to a terminal, or
# that have no command-line form; ``seed`` is the engine's option of the same name.
_GENERATE_SKIP = (
    "n", "best_of", "use_beam_search", "length_penalty", "early_stopping", "logprobs", "prompt_logprobs", "logits_processors", "seed",
    "structured_outputs",
    "output_kind",
    "logit_bias", "_bad_words_token_ids",
)  # fmt: skip
# Engine fields that are not flags: the model is the positional argument.
_ENGINE_SKIP = ("model",)
_BENCHMARKS = ("throughput", "serving")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Errors that are the user's to fix: reported in one line, exit 2.
_USER_ERRORS = (ValueError, CorralError, FileNotFoundError)

_MODEL_HELP = (
    "Path of a Hugging Face model folder (or a model id in the local Hugging Face cache). "
    "Default: the embedded storyteller model (corral.default_model)."
)
_GENERATE_DESCRIPTION = """\
Generate a completion of PROMPT and stream its text to stdout.

  corral generate PROMPT          the embedded default model answers
  corral generate MODEL PROMPT    MODEL answers

With one argument, it is the prompt; an argument that names a model (an existing
path, a path starting with / ./ ../ or ~, or a Hugging Face id such as org/name)
is refused, since a prompt is missing. Ctrl-C stops the generation, keeps the text
printed so far, and exits 130."""


def _log_level_option(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    # On the top level (default None: the subcommand decides) and on each subcommand
    # (SUPPRESS: the flag given before the subcommand keeps its value).
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
        default=None if top_level else argparse.SUPPRESS,
        help=f"Python logging level: {', '.join(LOG_LEVELS)} (default: INFO; WARNING for "
        "generate, whose terminal shows the text alone).",
    )  # fmt: skip


def _engine_options(parser: argparse.ArgumentParser) -> list[str]:
    group = parser.add_argument_group("engine options (corral.AsyncEngineArgs)")
    return ["model", *add_attrs_options(group, AsyncEngineArgs, skip=_ENGINE_SKIP)]


def build_parser() -> argparse.ArgumentParser:
    """The ``corral`` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(prog="corral", description=corral.__doc__)
    parser.add_argument("--version", action="version", version=f"corral {package_version()}")
    _log_level_option(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="Serve an OpenAI-compatible HTTP API.", description="Serve an "
        "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, "
        "/health, /metrics, /tokenize, /detokenize, /version).",
    )  # fmt: skip
    _log_level_option(serve)
    serve.add_argument("model", nargs="?", default=None, help=_MODEL_HELP)
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
        help="Model names clients may use; the first is reported (default: the model path, "
        f"or {DEFAULT_SERVED_NAME!r} for the embedded model).",
    )  # fmt: skip
    server.add_argument(
        "--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
        help="After SIGINT/SIGTERM, how long in-flight requests may run on (default: 30).",
    )  # fmt: skip
    server.add_argument(
        "--max-request-body-size", type=int, default=DEFAULT_MAX_BODY_SIZE, metavar="BYTES",
        help=f"Larger request bodies get 413 (default: {DEFAULT_MAX_BODY_SIZE}).",
    )  # fmt: skip
    tools = serve.add_argument_group("tool calling options")
    tools.add_argument(
        "--enable-auto-tool-choice", action="store_true",
        help='Serve tool_choice "auto": the model decides whether to call tools, and '
        "--tool-call-parser reads the calls out of its text (needs --tool-call-parser).",
    )  # fmt: skip
    tools.add_argument(
        "--tool-call-parser", choices=tool_parser_names(), default=None, metavar="NAME",
        help="How the model writes tool calls: "
        f"{', '.join(tool_parser_names())} (hermes: <tool_call>{{json}}</tool_call>, as "
        "Hermes and Qwen models and the embedded model write them).",
    )  # fmt: skip
    server.add_argument(
        "--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
        help="LoRA adapters (PEFT folders) to serve, each NAME=PATH or vLLM's JSON form "
        '\'{"name": NAME, "path": PATH}\'; a request\'s model NAME selects one '
        "(needs --enable-lora).",
    )  # fmt: skip
    server.add_argument(
        "--allow-runtime-lora-updating", action="store_true",
        help="Offer POST /v1/load_lora_adapter and /v1/unload_lora_adapter.",
    )  # fmt: skip
    serve.set_defaults(handler=_serve, engine_fields=engine_fields, usage=serve)

    generate = commands.add_parser(
        "generate", help="Stream one completion to the terminal.",
        usage="%(prog)s [-h] [options] [MODEL] PROMPT", description=_GENERATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _log_level_option(generate)
    generate.add_argument(
        "arguments", nargs="+", metavar="[MODEL] PROMPT",
        help=f"The prompt text, after an optional MODEL. MODEL: {_MODEL_HELP}",
    )  # fmt: skip
    engine_fields = _engine_options(generate)
    sampling = generate.add_argument_group("sampling options (corral.SamplingParams)")
    # vLLM's default of 16 tokens cuts a story short; a terminal wants a whole one.
    sampling_fields = add_attrs_options(
        sampling, SamplingParams, skip=_GENERATE_SKIP, defaults={"max_tokens": 256}
    )
    generate.set_defaults(
        handler=_generate, engine_fields=engine_fields, sampling_fields=sampling_fields,
        log_requests=False, disable_log_stats=True, usage=generate,
    )  # fmt: skip

    bench = commands.add_parser(
        "bench", help="Run a benchmark from benchmarks/.",
        description="Run benchmarks/<NAME>.py with the remaining arguments.",
    )  # fmt: skip
    _log_level_option(bench)
    bench.add_argument("name", choices=_BENCHMARKS, help="Which benchmark.")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="Arguments for the benchmark.")
    bench.set_defaults(handler=_bench, usage=bench)
    return parser


_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def names_a_model(text: str) -> bool:
    """Whether a lone ``generate`` argument is a model rather than a prompt."""
    if any(c.isspace() for c in text):
        return False
    if text.startswith(("/", "./", "../", "~")) or Path(text).exists():
        return True
    return _HF_ID.fullmatch(text) is not None


def split_generate_arguments(arguments: Sequence[str]) -> tuple[str | None, str]:
    """``[MODEL] PROMPT`` -> (model or None, prompt), by the rule ``--help`` states.

    Raises:
        ValueError: More than two arguments, or a lone argument that names a model.
    """
    if len(arguments) == 2:
        return arguments[0], arguments[1]
    if len(arguments) > 2:
        raise ValueError(
            f"expected [MODEL] PROMPT, got {len(arguments)} arguments; quote a prompt "
            'that has spaces: corral generate "Once upon a time"'
        )
    (prompt,) = arguments
    if names_a_model(prompt):
        raise ValueError(
            f"{prompt!r} names a model, but no prompt was given: "
            f'corral generate {prompt} "Once upon a time"'
        )
    return None, prompt


def _engine_args(namespace: argparse.Namespace) -> AsyncEngineArgs:
    if namespace.model is None:
        namespace.model = default_model_path()
    return AsyncEngineArgs(**collect(namespace, namespace.engine_fields))


def _default_names(namespace: argparse.Namespace) -> tuple[str, ...]:
    # The embedded model is served under a short name rather than its install path.
    return (DEFAULT_SERVED_NAME,) if namespace.model is None else ()


def _lora_module(text: str) -> tuple[str, str]:
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--lora-modules: {text!r} is not valid JSON ({exc})") from None
        extra = sorted(set(spec) - {"name", "path"})
        if extra:
            raise ValueError(
                f"--lora-modules: unsupported key(s) {', '.join(extra)} in {text!r} "
                "(corral reads name and path; an adapter's parent is the served model)"
            )
        name, path = spec.get("name"), spec.get("path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ValueError(
                f"--lora-modules: JSON form needs non-empty string name and path, got {text!r}"
            )
        return name, path
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules: expected NAME=PATH or JSON, got {text!r}")
    return name, path


def _serve(namespace: argparse.Namespace) -> int:
    settings = ServerSettings(
        host=namespace.host,
        port=namespace.port,
        api_key=namespace.api_key,
        loop=namespace.loop,
        served_model_names=tuple(namespace.served_model_name or _default_names(namespace)),
        shutdown_timeout=namespace.shutdown_timeout,
        max_body_size=namespace.max_request_body_size,
        tool_call_parser=namespace.tool_call_parser,
        enable_auto_tool_choice=namespace.enable_auto_tool_choice,
        lora_modules=tuple(_lora_module(m) for m in namespace.lora_modules),
        allow_runtime_lora_updating=namespace.allow_runtime_lora_updating,
    )
    engine_args = _engine_args(namespace)
    # Before the model loads: a taken port should cost the user no loading time.
    check_port(settings.host, settings.port)
    run_server(settings, engine_args)
    return 0


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C ends the process here and now, whatever it is doing (importing, building
    # the extension, loading in a worker thread, streaming): a clean unwinding would
    # first wait for the loading thread, and print its log lines after the prompt
    # returned. The text streamed so far is flushed and stays on screen.
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except (OSError, RuntimeError, ValueError):
        pass  # stdout closed, or the signal arrived inside a write to it
    os.write(2, b"corral generate: interrupted\n")
    os._exit(130)


def _generate(namespace: argparse.Namespace) -> int:
    from corral.engine import open_engine

    namespace.model, prompt = split_generate_arguments(namespace.arguments)
    params = SamplingParams(**collect(namespace, namespace.sampling_fields))
    engine_args = _engine_args(namespace)

    async def main() -> None:
        async with open_engine(engine_args) as engine:
            async with engine.generate(prompt, params) as stream:
                shown = 0
                async for output in stream:
                    text = output.outputs[0].text
                    sys.stdout.write(text[shown:])
                    sys.stdout.flush()
                    shown = len(text)
            model_config = await engine.get_model_config()
            assert model_config is not None  # open_engine always loads a model
        sys.stdout.write("\n")
        sys.stdout.flush()
        completion = output.outputs[0]
        generated = len(completion.token_ids)
        wanted = params.max_tokens
        if completion.finish_reason == "length" and wanted is not None and generated < wanted:
            context = int(model_config.max_model_len)
            print(
                f"corral generate: max_tokens {wanted} was capped to {generated}: the model's "
                f"context length is {context} tokens, of which the prompt takes "
                f"{len(output.prompt_token_ids)}",
                file=sys.stderr,
            )

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


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def user_error(exc: BaseException) -> BaseException | None:
    """The error to report in one line, when ``exc`` (or the one error inside an
    exception group, as task groups raise them) is the user's to fix; else None."""
    leaves = _leaves(exc)
    if len(leaves) == 1 and isinstance(leaves[0], (*_USER_ERRORS, PortInUseError)):
        return leaves[0]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corral`` console script; returns the exit status."""
    parser = build_parser()
    namespace, extras = parser.parse_known_args(argv)
    if extras:
        # Reported by the subcommand's parser, so that its usage is the one shown.
        namespace.usage.error(f"unrecognized arguments: {' '.join(extras)}")
    if namespace.command == "generate":
        signal.signal(signal.SIGINT, _interrupted)
    level = namespace.log_level or ("WARNING" if namespace.command == "generate" else "INFO")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(namespace.handler(namespace))
    except BaseException as exc:  # sorted by user_error; anything else is re-raised
        error = user_error(exc)
        if error is None:
            raise
        status = 1 if isinstance(error, PortInUseError) else 2
        print(f"corral {namespace.command}: error: {error}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
