"""autolm: load and run pretrained language models with transformers' Auto* API.

Names are imported lazily so `import autolm` stays cheap; torch loads on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "PretrainedConfig": "configuration",
    "PreTrainedConfig": "configuration",
    "GenerationConfig": "configuration",
    "AutoConfig": "auto",
    "AutoModel": "auto",
    "AutoModelForCausalLM": "auto",
    "AutoModelForSequenceClassification": "auto",
    "PreTrainedModel": "modeling_utils",
    "AutoTokenizer": "tokenization",
    "PreTrainedTokenizerFast": "tokenization",
    "TextStreamer": "generation",
    "TextIteratorStreamer": "generation",
    "pipeline": "pipelines",
    "chat": "generation.chat",
    "DynamicCache": "models.cache",
    "StaticCache": "models.cache",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autolm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
