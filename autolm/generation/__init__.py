"""Text generation: a generator of token ids (`generate_tokens`) and everything built on it.

`generate` (behind `model.generate`), the streamers, `pipeline` and `chat` all consume `generate_tokens`.
"""

from __future__ import annotations

from .loop import decode_one_token, generate, generate_tokens, prefill
from .processors import LogitsProcessor, LogitsProcessorList
from .sampling import sample
from .stopping import MaxLengthCriteria, StoppingCriteria, StoppingCriteriaList
from .streamers import TextIteratorStreamer, TextStreamer
from .transitions import compute_transition_scores

__all__ = [
    "LogitsProcessor",
    "LogitsProcessorList",
    "MaxLengthCriteria",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "TextIteratorStreamer",
    "TextStreamer",
    "compute_transition_scores",
    "decode_one_token",
    "generate",
    "generate_tokens",
    "prefill",
    "sample",
]
