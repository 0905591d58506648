"""The synchronous engine core: requests, paged KV cache, scheduler, `EngineCore`."""

from corral.core.engine_core import EngineCore as EngineCore
from corral.core.interface import ModelRunner as ModelRunner
from corral.core.interface import ModelRunnerOutput as ModelRunnerOutput
from corral.core.interface import SchedulerOutput as SchedulerOutput
