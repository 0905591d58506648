"""corral: an LLM inference engine for structured-concurrency Python.

The front doors are `open_engine` (async, inside a trio or asyncio program) and
`LLM` (offline batches). Both take vLLM's argument names.
"""

from corral.config import AsyncEngineArgs as AsyncEngineArgs
from corral.config import CoreConfig as CoreConfig
from corral.config import EngineArgs as EngineArgs
from corral.core import EngineCore as EngineCore
from corral.core import EngineStats as EngineStats
from corral.engine import AsyncEngine as AsyncEngine
from corral.engine import AsyncLLMEngine as AsyncLLMEngine
from corral.engine import RequestStream as RequestStream
from corral.engine import open_engine as open_engine
from corral.engine import open_engine_from_core as open_engine_from_core
from corral.errors import CorralError as CorralError
from corral.errors import EngineClosedError as EngineClosedError
from corral.errors import EngineDeadError as EngineDeadError
from corral.errors import NativeBuildError as NativeBuildError
from corral.errors import NotSupportedError as NotSupportedError
from corral.llm import LLM as LLM
from corral.outputs import CompletionOutput as CompletionOutput
from corral.outputs import RequestMetrics as RequestMetrics
from corral.outputs import RequestOutput as RequestOutput
from corral.sampling_params import SamplingParams as SamplingParams

__version__ = "0.1.0"
