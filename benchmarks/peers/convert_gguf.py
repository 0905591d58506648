"""Convert the benchmark's checkpoint to GGUF with llama.cpp's own converter.

    python convert_gguf.py LLAMA_CPP_DIR MODEL_DIR OUTFILE OUTTYPE   (f32, bf16, ...)

Runs ``convert_hf_to_gguf.py`` of the vendored llama.cpp (and its ``gguf-py``) in
the benchmark's own Python, which has the torch and transformers the converter
imports. One change: the vocabulary. The benchmark's tokenizer is a word-level
one that the converter does not know (it hashes pre-tokenizers it has seen), and
the llama.cpp driver feeds token ids, never text; so the GGUF gets llama.cpp's
"none" tokenizer sized to the model's vocabulary, which also has no end-of-sequence
token (every request runs to its length, as ``ignore_eos`` asks of the others).
The weights go through the converter unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    llama_cpp_dir, model_dir, outfile, outtype = argv
    sys.path.insert(0, llama_cpp_dir)
    sys.path.insert(1, str(Path(llama_cpp_dir) / "gguf-py"))
    import convert_hf_to_gguf
    from conversion.llama import LlamaModel

    def set_vocab(self: Any) -> None:
        self._set_vocab_none()
        self.gguf_writer.add_vocab_size(self.hparams["vocab_size"])

    LlamaModel.set_vocab = set_vocab
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", outfile, "--outtype", outtype]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
