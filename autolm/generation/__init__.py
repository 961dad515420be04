"""Text generation: a generator of token ids (`generate_tokens`) and everything built on it.

`generate` (behind `model.generate`), the streamers, `pipeline` and `chat` all consume `generate_tokens`.
"""

from __future__ import annotations

from .loop import decode_one_token, generate, generate_tokens, prefill
from .sampling import sample
from .streamers import TextIteratorStreamer, TextStreamer

__all__ = [
    "TextIteratorStreamer",
    "TextStreamer",
    "decode_one_token",
    "generate",
    "generate_tokens",
    "prefill",
    "sample",
]
