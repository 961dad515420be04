"""GGUF checkpoints: llama.cpp's single-file format, read into transformers' names and layouts.

The loader calls four functions, each taking a path or an opened `GGUFFile`:

- `config_from_gguf`: the `config.json` dict the metadata describes;
- `iter_gguf_tensors`: `(hf_name, tensor)` pairs, dequantized one tensor at a time;
- `tokenizer_from_gguf`: the tokenizer, as a `PreTrainedTokenizerFast`;
- `read_gguf`: open once and pass the result to the others.

`gguf.GGUFReader` (the `gguf` package) parses the file; this package maps names, rebuilds the
config and tokenizer, and dequantizes with torch.
"""

from __future__ import annotations

from .dequant import SUPPORTED_TYPES, dequantize
from .names import FAMILIES, config_from_gguf, iter_gguf_tensors
from .reader import GGUFFile, read_gguf
from .tokenizer import gguf_tokenizer_parts, tokenizer_from_gguf

__all__ = [
    "FAMILIES",
    "SUPPORTED_TYPES",
    "GGUFFile",
    "config_from_gguf",
    "dequantize",
    "gguf_tokenizer_parts",
    "iter_gguf_tensors",
    "read_gguf",
    "tokenizer_from_gguf",
]
