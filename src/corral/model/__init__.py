"""Model execution: loading HF checkpoints, the paged-attention models, the runner and sampler."""

from corral.model.config import ModelConfig as ModelConfig
from corral.model.loader import load_model as load_model
from corral.model.runner import TorchModelRunner as TorchModelRunner
