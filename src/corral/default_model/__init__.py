"""The embedded default model: a tiny Llama that tells stories about its own small world.

The folder holds a Hugging Face checkpoint (config, safetensors weights, tokenizer with
a chat template) written by ``scripts/train_default_model.py``; docs/default_model.md
says what it is and is not. It ships inside the package so that corral runs with
nothing downloaded.
"""

from pathlib import Path

DEFAULT_MODEL_PATH: Path = Path(__file__).resolve().parent
"""The checkpoint folder: pass it wherever a model path or Hugging Face id goes."""

DEFAULT_SERVED_NAME = "storyteller"
"""The name `corral serve` gives the embedded model when no model is named."""


def default_model_path() -> str:
    """The checkpoint folder as a string, the form ``model=`` arguments take.

    Returns:
        The absolute path of the embedded default model's folder.
    """
    return str(DEFAULT_MODEL_PATH)
