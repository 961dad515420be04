"""Tokenizers: `AutoTokenizer.from_pretrained` and `PreTrainedTokenizerFast`, plus chat template rendering.

Importing this package loads neither torch nor transformers; torch comes in only for return_tensors="pt".
"""

from __future__ import annotations

from .auto import AutoTokenizer
from .batch_encoding import BatchEncoding
from .chat_template import render_chat_template
from .qwen import QWenTokenizer
from .tokenizer import PreTrainedTokenizerFast

__all__ = [
    "AutoTokenizer",
    "BatchEncoding",
    "PreTrainedTokenizerFast",
    "QWenTokenizer",
    "render_chat_template",
]
