"""corral: an LLM inference engine for structured-concurrency Python.

The front doors are `open_engine` (async, inside a trio or asyncio program) and
`LLM` (offline batches). Both take vLLM's argument names.

Importing `corral` is cheap: the value types and errors load at once, the front
doors (anyio, torch, tokenizers) on first use, as ``corral.testing`` does. The
internal layers (`corral.core`, `corral.model`, `corral.ops`, the entrypoints'
internals) are not re-exported here; see docs/architecture.md.
"""

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

# OpenMP threads that spin at barriers take the core their partner needs when the
# machine is shared: two ACTIVE threads measured 3-5x slower than two PASSIVE ones
# (docs/kernels.md, "OpenMP threads and wait policy"). libgomp reads the policy once,
# when torch loads it, so it is set here, before corral imports torch; a value the
# user chose is kept, and a process that imported torch first keeps torch's default.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from corral.config import AsyncEngineArgs as AsyncEngineArgs
from corral.config import EngineArgs as EngineArgs
from corral.errors import CorralError as CorralError
from corral.errors import DistributedError as DistributedError
from corral.errors import EngineClosedError as EngineClosedError
from corral.errors import EngineDeadError as EngineDeadError
from corral.errors import NativeBuildError as NativeBuildError
from corral.errors import NotSupportedError as NotSupportedError
from corral.outputs import CompletionOutput as CompletionOutput
from corral.outputs import RequestMetrics as RequestMetrics
from corral.outputs import RequestOutput as RequestOutput
from corral.sampling_params import RequestOutputKind as RequestOutputKind
from corral.sampling_params import SamplingParams as SamplingParams
from corral.stats import EngineStats as EngineStats
from corral.structured_outputs import StructuredOutputsParams as StructuredOutputsParams

if TYPE_CHECKING:
    from corral.async_llm_engine import AsyncLLMEngine as AsyncLLMEngine
    from corral.beam_search import BeamSearchOutput as BeamSearchOutput
    from corral.beam_search import BeamSearchParams as BeamSearchParams
    from corral.beam_search import BeamSearchSequence as BeamSearchSequence
    from corral.engine import AsyncEngine as AsyncEngine
    from corral.engine import RequestStream as RequestStream
    from corral.engine import open_engine as open_engine
    from corral.engine import open_engine_from_core as open_engine_from_core
    from corral.llm import LLM as LLM
    from corral.lora.request import LoRARequest as LoRARequest

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "AsyncEngine": "corral.engine",
    "AsyncLLMEngine": "corral.async_llm_engine",
    "BeamSearchOutput": "corral.beam_search",
    "BeamSearchParams": "corral.beam_search",
    "BeamSearchSequence": "corral.beam_search",
    "LLM": "corral.llm",
    "LoRARequest": "corral.lora.request",
    "RequestStream": "corral.engine",
    "open_engine": "corral.engine",
    "open_engine_from_core": "corral.engine",
}

__all__ = [
    "LLM",
    "AsyncEngine",
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "BeamSearchOutput",
    "BeamSearchParams",
    "BeamSearchSequence",
    "CompletionOutput",
    "CorralError",
    "DistributedError",
    "EngineArgs",
    "EngineClosedError",
    "EngineDeadError",
    "EngineStats",
    "LoRARequest",
    "NativeBuildError",
    "NotSupportedError",
    "RequestMetrics",
    "RequestOutput",
    "RequestOutputKind",
    "RequestStream",
    "SamplingParams",
    "StructuredOutputsParams",
    "open_engine",
    "open_engine_from_core",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
