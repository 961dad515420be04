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
    "AutoModelForTokenClassification": "auto",
    "AutoModelForQuestionAnswering": "auto",
    "AutoModelForMaskedLM": "auto",
    "AutoModelForSeq2SeqLM": "auto",
    "AutoModelForTextEncoding": "auto",
    "PreTrainedModel": "modeling_utils",
    "AutoTokenizer": "tokenization",
    "PreTrainedTokenizerFast": "tokenization",
    "QWenTokenizer": "tokenization",
    "TextStreamer": "generation",
    "TextIteratorStreamer": "generation",
    "pipeline": "pipelines",
    "chat": "generation.chat",
    "DynamicCache": "models.cache",
    "StaticCache": "models.cache",
    "set_seed": "utils",
    **dict.fromkeys(
        (
            "LogitsProcessor",
            "LogitsProcessorList",
            "StoppingCriteria",
            "StoppingCriteriaList",
            "MaxLengthCriteria",
        ),
        "generation",
    ),
}


def _family_exports() -> dict[str, str]:
    """Every family's config and model classes (`LlamaConfig`, `Qwen2ForCausalLM`, ...), named by the
    registry (plain data), so a new family is importable from the top level the day it is registered."""
    from .models import MODELS

    names: dict[str, str] = {}
    for entry in MODELS.values():
        module = f"models.{entry['module']}"
        for name in (entry["config"], *entry["tasks"].values()):
            names.setdefault(name, module)
        names.setdefault(entry["config"].removesuffix("Config") + "PreTrainedModel", module)
    return names


_EXPORTS.update(_family_exports())


def __getattr__(name: str):
    if name == "logging":  # the submodule (transformers.logging's API)
        return importlib.import_module(".logging", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autolm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS) + ["logging"])


def _configure_logging() -> None:
    from .logging import configure_from_env

    configure_from_env()


_configure_logging()
