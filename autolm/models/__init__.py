"""The registry: plain data from `model_type` to the family module, its config class and the classes of
the tasks it really has, imported lazily.

Tasks, one per Auto class: "base" (AutoModel), "causal_lm" (AutoModelForCausalLM),
"sequence_classification", "token_classification", "question_answering", "masked_lm", "seq2seq_lm"
(AutoModelForSeq2SeqLM) and "text_encoding" (AutoModelForTextEncoding). An entry lists only the tasks
its family really has. Adding a family is one file in this folder plus one entry here;
nothing outside `models/` names a family (GGUF's name tables are plain data keyed by architecture).
"""

from __future__ import annotations

import importlib

from ..errors import UnsupportedModelError

TASKS = (
    "base",
    "causal_lm",
    "sequence_classification",
    "token_classification",
    "question_answering",
    "masked_lm",
    "seq2seq_lm",
    "text_encoding",
)

MODELS: dict[str, dict] = {
    "llama": {
        "module": "llama",
        "config": "LlamaConfig",
        "tasks": {
            "base": "LlamaModel",
            "causal_lm": "LlamaForCausalLM",
            "sequence_classification": "LlamaForSequenceClassification",
        },
    },
    "mistral": {
        "module": "mistral",
        "config": "MistralConfig",
        "tasks": {
            "base": "MistralModel",
            "causal_lm": "MistralForCausalLM",
            "sequence_classification": "MistralForSequenceClassification",
            "token_classification": "MistralForTokenClassification",
        },
    },
    "phi3": {
        "module": "phi3",
        "config": "Phi3Config",
        "tasks": {
            "base": "Phi3Model",
            "causal_lm": "Phi3ForCausalLM",
            "sequence_classification": "Phi3ForSequenceClassification",
            "token_classification": "Phi3ForTokenClassification",
        },
    },
    "gpt2": {
        "module": "gpt2",
        "config": "GPT2Config",
        "tasks": {
            "base": "GPT2Model",
            "causal_lm": "GPT2LMHeadModel",
            "sequence_classification": "GPT2ForSequenceClassification",
            "token_classification": "GPT2ForTokenClassification",
        },
    },
    "qwen2": {
        "module": "qwen2",
        "config": "Qwen2Config",
        "tasks": {
            "base": "Qwen2Model",
            "causal_lm": "Qwen2ForCausalLM",
            "sequence_classification": "Qwen2ForSequenceClassification",
        },
    },
    "qwen3": {
        "module": "qwen3",
        "config": "Qwen3Config",
        "tasks": {
            "base": "Qwen3Model",
            "causal_lm": "Qwen3ForCausalLM",
            "sequence_classification": "Qwen3ForSequenceClassification",
        },
    },
    "qwen2_moe": {
        "module": "qwen2_moe",
        "config": "Qwen2MoeConfig",
        "tasks": {
            "base": "Qwen2MoeModel",
            "causal_lm": "Qwen2MoeForCausalLM",
            "sequence_classification": "Qwen2MoeForSequenceClassification",
        },
    },
    "qwen3_moe": {
        "module": "qwen3_moe",
        "config": "Qwen3MoeConfig",
        "tasks": {
            "base": "Qwen3MoeModel",
            "causal_lm": "Qwen3MoeForCausalLM",
            "sequence_classification": "Qwen3MoeForSequenceClassification",
        },
    },
    "qwen": {
        "module": "qwen",
        "config": "QWenConfig",
        "tasks": {"base": "QWenModel", "causal_lm": "QWenLMHeadModel"},
    },
    "gemma3_text": {
        "module": "gemma3",
        "config": "Gemma3TextConfig",
        "tasks": {
            "base": "Gemma3TextModel",
            "causal_lm": "Gemma3ForCausalLM",
            "sequence_classification": "Gemma3TextForSequenceClassification",
        },
    },
    "bert": {
        "module": "bert",
        "config": "BertConfig",
        "tasks": {
            "base": "BertModel",
            "sequence_classification": "BertForSequenceClassification",
            "token_classification": "BertForTokenClassification",
            "question_answering": "BertForQuestionAnswering",
            "masked_lm": "BertForMaskedLM",
            "text_encoding": "BertModel",
        },
    },
    "t5": {
        "module": "t5",
        "config": "T5Config",
        "tasks": {
            "base": "T5Model",
            "seq2seq_lm": "T5ForConditionalGeneration",
            "text_encoding": "T5EncoderModel",
        },
    },
    "mt5": {
        "module": "t5",
        "config": "MT5Config",
        "tasks": {
            "base": "MT5Model",
            "seq2seq_lm": "MT5ForConditionalGeneration",
            "text_encoding": "MT5EncoderModel",
        },
    },
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


def architectures() -> dict[str, str]:
    """`architectures` entries -> model_type, for configs without `model_type` (derived from MODELS)."""
    table: dict[str, str] = {}
    for model_type, entry in MODELS.items():
        for name in [*entry["tasks"].values(), *entry.get("architectures", ())]:
            table.setdefault(name, model_type)
    return table


def supported_model_types() -> list[str]:
    return sorted(MODELS)


def canonical_model_type(model_type: str) -> str | None:
    model_type = ALIASES.get(model_type, model_type)
    return model_type if model_type in MODELS else None


def tasks_of(model_type: str) -> list[str]:
    return list(MODELS[canonical_model_type(model_type)]["tasks"])


def get_class(model_type: str, task: str):
    """The class for `task` ("config" or one of TASKS) of a built-in `model_type`, importing the family
    module on first use.

    Raises:
        UnsupportedModelError: the family has no class for `task` (the message names the tasks it has).
    """
    canonical = canonical_model_type(model_type)
    entry = MODELS[canonical]
    if task == "config":
        name = entry["config"]
    elif task in entry["tasks"]:
        name = entry["tasks"][task]
    else:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no {task} model; its tasks are: {', '.join(entry['tasks'])}."
        )
    module = importlib.import_module(f".{entry['module']}", __name__)
    return getattr(module, name)
