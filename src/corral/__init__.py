"""corral: an LLM inference engine for structured-concurrency Python."""

__version__ = "0.1.0"
