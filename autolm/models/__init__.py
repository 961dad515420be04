"""The registry: plain data from `model_type` to the family module and its classes, imported lazily.

Tasks: "config", "base" (AutoModel), "causal_lm" (AutoModelForCausalLM),
"sequence_classification" (AutoModelForSequenceClassification).
"""

from __future__ import annotations

import importlib

_TASKS = ("config", "base", "causal_lm", "sequence_classification")


def _family(module: str, prefix: str, config: str | None = None) -> dict[str, str]:
    return {
        "module": module,
        "config": config or f"{prefix}Config",
        "base": f"{prefix}Model",
        "causal_lm": f"{prefix}ForCausalLM",
        "sequence_classification": f"{prefix}ForSequenceClassification",
    }


MODELS: dict[str, dict[str, str]] = {
    "llama": _family("llama", "Llama"),
    "mistral": _family("llama", "Llama", config="MistralConfig"),
    "qwen2": _family("qwen2", "Qwen2"),
    "qwen3": _family("qwen3", "Qwen3"),
}

# Other spellings of a supported type (checkpoints in the wild use these).
ALIASES: dict[str, str] = {
    "smollm": "llama",
    "smollm2": "llama",
    "tinyllama": "llama",
    "vicuna": "llama",
    "llama2": "llama",
    "llama3": "llama",
}

# `architectures` entries -> model_type, for configs without `model_type`.
ARCHITECTURES: dict[str, str] = {
    f"{prefix}{suffix}": model_type
    for model_type, prefix in (
        ("llama", "Llama"),
        ("mistral", "Mistral"),
        ("qwen2", "Qwen2"),
        ("qwen3", "Qwen3"),
    )
    for suffix in ("Model", "ForCausalLM", "ForSequenceClassification")
}


def supported_model_types() -> list[str]:
    return sorted(MODELS)


def canonical_model_type(model_type: str) -> str | None:
    model_type = ALIASES.get(model_type, model_type)
    return model_type if model_type in MODELS else None


def get_class(model_type: str, task: str):
    """The class for `task` of a built-in `model_type` (imports the family module on first use)."""
    entry = MODELS[canonical_model_type(model_type)]
    module = importlib.import_module(f".{entry['module']}", __name__)
    return getattr(module, entry[task])
