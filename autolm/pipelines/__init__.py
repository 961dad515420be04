"""`pipeline(task, model=...)`: transformers' pipelines, one module per task, built on the Auto classes.

Outputs follow transformers' pipelines, so code written for them keeps working. A task is one row of
TASKS (plain data): the module, the pipeline class and the Auto class's task (see `autolm.models`).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from ..errors import GenerationError

logger = logging.getLogger("autolm")

# task -> (module in this package, pipeline class, registry task of the model it loads)
TASKS: dict[str, tuple[str, str, str]] = {
    "text-generation": ("text_generation", "TextGenerationPipeline", "causal_lm"),
    "text-classification": ("text_classification", "TextClassificationPipeline", "sequence_classification"),
    "fill-mask": ("fill_mask", "FillMaskPipeline", "masked_lm"),
    "feature-extraction": ("feature_extraction", "FeatureExtractionPipeline", "base"),
    "token-classification": ("token_classification", "TokenClassificationPipeline", "token_classification"),
    "question-answering": ("question_answering", "QuestionAnsweringPipeline", "question_answering"),
    "text2text-generation": ("text2text_generation", "Text2TextGenerationPipeline", "seq2seq_lm"),
    "summarization": ("summarization", "SummarizationPipeline", "seq2seq_lm"),
    "translation": ("translation", "TranslationPipeline", "seq2seq_lm"),
}
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
SUPPORTED_TASKS = tuple(TASKS)
# task -> default model name; filled in where a default is chosen (None: the caller must pass model=)
DEFAULT_MODELS: dict[str, str | None] = dict.fromkeys(TASKS)


def default_model(task: str) -> str:
    """The model `pipeline(task)` loads when given none: `DEFAULT_MODELS[task]`, else, for
    text-generation, the embedded SmolLM2 GGUF (see `autolm.defaults`)."""
    name = DEFAULT_MODELS.get(task)
    if name is None and task == "text-generation":
        from ..defaults import DEFAULT_MODEL_DESCRIPTION, default_model_path

        path = default_model_path()  # raises with the `pip install` line when the package is missing
        logger.info(
            "pipeline(%r) got no model; using the default %s (%s)", task, path, DEFAULT_MODEL_DESCRIPTION
        )
        return str(path)
    if name is None:
        raise GenerationError(
            f"pipeline({task!r}) got no model and no default model is set for this task. "
            f"Pass model=<name or path or loaded model>, e.g. pipeline({task!r}, model='HuggingFaceTB/SmolLM2-135M-Instruct')."
        )
    return name


def _device(device: int | str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    return torch.device(device)


def _resolve_task(task: str) -> tuple[str, dict]:
    """The TASKS key for `task` and the options its name carries ("translation_en_to_fr")."""
    task = TASK_ALIASES.get(task, task)
    if task in TASKS:
        return task, {}
    parts = task.split("_")
    if len(parts) == 4 and parts[0] == "translation" and parts[2] == "to" and "translation" in TASKS:
        return "translation", {"src_lang": parts[1], "tgt_lang": parts[3]}
    raise GenerationError(
        f"pipeline task {task!r} is not supported; supported: {', '.join([*TASKS, *TASK_ALIASES])}."
    )


def pipeline(
    task: str = "text-generation",
    model: Any = None,
    tokenizer: Any = None,
    torch_dtype: torch.dtype | str | None = None,
    dtype: torch.dtype | str | None = None,
    device: int | str | torch.device | None = None,
    device_map: Any = None,
    model_kwargs: dict | None = None,
    **kwargs,
):
    """Build the pipeline for `task`.

    Args:
        task: one of TASKS or its aliases ("sentiment-analysis", ...).
        model: a name, a path, or a loaded model; None uses the task's default model when one is set.
        tokenizer: a name, a path, or a tokenizer; defaults to the model's.
        dtype / torch_dtype: the weights' dtype ("auto", torch.bfloat16, ...).
        device: -1 / "cpu", an accelerator index or name.
        **kwargs: the pipeline's defaults for every call (e.g. max_new_tokens=64, top_k=3).

    Raises:
        GenerationError: an unsupported task, or no model given and none configured.
    """
    from .. import auto
    from ..tokenization import AutoTokenizer

    task, task_options = _resolve_task(task)
    module, class_name, model_task = TASKS[task]
    auto_class = next(
        c
        for c in vars(auto).values()
        if isinstance(c, type) and c is not auto._AutoModel and getattr(c, "task", None) == model_task
    )
    if model is None:
        model = default_model(task)
    target = _device(device)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        load_kwargs = dict(model_kwargs or {})
        if dtype is not None or torch_dtype is not None:
            load_kwargs["dtype"] = dtype if dtype is not None else torch_dtype
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        elif target is not None:
            load_kwargs["device_map"] = str(target)
        name = model
        model = auto_class.from_pretrained(model, **load_kwargs)
    else:
        name = getattr(model, "name_or_path", None)
        if target is not None:
            model = model.to(target)
    if tokenizer is None:
        if not name:
            raise GenerationError("pipeline() got a model without a name or path; pass tokenizer= as well.")
        tokenizer = AutoTokenizer.from_pretrained(name)
    elif isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    pipeline_class = getattr(importlib.import_module(f".{module}", __name__), class_name)
    return pipeline_class(model, tokenizer, **task_options, **kwargs)


def __getattr__(name: str):
    for module, class_name, _ in TASKS.values():
        if class_name == name:
            return getattr(importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module 'autolm.pipelines' has no attribute {name!r}")
