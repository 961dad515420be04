"""`pipeline("text-generation", ...)`: text or chat messages in, `[{"generated_text": ...}]` out.

Built on `generate`; outputs follow transformers' pipeline, so code written for it keeps working.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .errors import GenerationError

logger = logging.getLogger("autolm")

SUPPORTED_TASKS = ("text-generation", "text-classification")
TASK_ALIASES = {"sentiment-analysis": "text-classification"}
# task -> default model name; filled in where a default is chosen (None: the caller must pass model=)
DEFAULT_MODELS: dict[str, str | None] = {"text-generation": None, "text-classification": None}

# __call__ arguments that shape the pipeline's input/output rather than generation
_PIPELINE_ARGS = {
    "return_full_text",
    "return_tensors",
    "batch_size",
    "prefix",
    "add_special_tokens",
    "continue_final_message",
    "skip_special_tokens",
    "clean_up_tokenization_spaces",
}


def default_model(task: str) -> str:
    """The model `pipeline(task)` loads when given none: `DEFAULT_MODELS[task]`, else, for
    text-generation, the embedded SmolLM2 GGUF (see `autolm.defaults`)."""
    name = DEFAULT_MODELS.get(task)
    if name is None and task == "text-generation":
        from .defaults import DEFAULT_MODEL_DESCRIPTION, default_model_path

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
) -> TextGenerationPipeline | TextClassificationPipeline:
    """Build a text-generation or text-classification pipeline.

    Args:
        task: "text-generation", or "text-classification" (alias "sentiment-analysis") for the
            sequence-classification heads.
        model: a name, a path, or a loaded model; None uses the task's default model when one is set.
        tokenizer: a name, a path, or a tokenizer; defaults to the model's.
        dtype / torch_dtype: the weights' dtype ("auto", torch.bfloat16, ...).
        device: -1 / "cpu", an accelerator index or name.
        **kwargs: default generation settings for every call (e.g. max_new_tokens=64).

    Raises:
        GenerationError: an unsupported task, or no model given and none configured.
    """
    task = TASK_ALIASES.get(task, task)
    if task not in SUPPORTED_TASKS:
        raise GenerationError(
            f"pipeline task {task!r} is not supported; supported: "
            f"{', '.join([*SUPPORTED_TASKS, *TASK_ALIASES])}."
        )
    from .auto import AutoModelForCausalLM, AutoModelForSequenceClassification
    from .tokenization import AutoTokenizer

    auto_class = AutoModelForCausalLM if task == "text-generation" else AutoModelForSequenceClassification
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
    if task == "text-classification":
        return TextClassificationPipeline(model, tokenizer, **kwargs)
    return TextGenerationPipeline(model, tokenizer, **kwargs)


def _is_chat(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) for m in value)


class TextGenerationPipeline:
    """Call with a prompt, a conversation (list of {"role", "content"}), or a list of either."""

    task = "text-generation"

    def __init__(self, model, tokenizer, **generate_defaults):
        self.model = model
        self.tokenizer = tokenizer
        self.generate_defaults = generate_defaults
        self.generation_config = model.generation_config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, text_inputs: Any, **kwargs) -> list:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _PIPELINE_ARGS}
        generate_kwargs = {**self.generate_defaults, **kwargs}
        config = self.model.generation_config
        if (
            "max_new_tokens" not in generate_kwargs
            and "max_length" not in generate_kwargs
            and getattr(config, "max_new_tokens", None) is None
        ):
            generate_kwargs["max_new_tokens"] = 256  # transformers' pipeline default
        if getattr(config, "pad_token_id", None) is None and "pad_token_id" not in generate_kwargs:
            pad = getattr(self.tokenizer, "pad_token_id", None)
            if pad is not None:
                generate_kwargs["pad_token_id"] = pad

        single = isinstance(text_inputs, str) or _is_chat(text_inputs)
        items = [text_inputs] if single else list(text_inputs)
        if not items:
            raise GenerationError("The pipeline got an empty list of inputs; pass a string or messages.")
        batch_size = options.pop("batch_size", 1) or 1
        results = []
        for start in range(0, len(items), batch_size):
            results.extend(self._run_batch(items[start : start + batch_size], options, generate_kwargs))
        return results[0] if single else results

    def _encode(self, item: Any, options: dict) -> list[int]:
        if _is_chat(item):
            messages = list(item)
            cont = options.get("continue_final_message")
            if cont is None:
                cont = messages[-1].get("role") == "assistant"
            return self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=not cont,
                continue_final_message=cont,
                tokenize=True,
                return_dict=False,
            )
        if not isinstance(item, str):
            raise GenerationError(
                f"text-generation inputs are strings or lists of {{'role', 'content'}} messages; got {type(item).__name__}."
            )
        encode_kwargs = {}
        if options.get("add_special_tokens") is not None:
            encode_kwargs["add_special_tokens"] = options["add_special_tokens"]
        return self.tokenizer(options.get("prefix", "") + item, **encode_kwargs)["input_ids"]

    def _run_batch(self, items: list, options: dict, generate_kwargs: dict) -> list[list[dict]]:
        encoded = [list(self._encode(item, options)) for item in items]
        width = max(len(ids) for ids in encoded)
        pad = generate_kwargs.get("pad_token_id", getattr(self.tokenizer, "pad_token_id", None)) or 0
        # left padding: every prompt ends at the same column, where generation starts
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], dtype=torch.long)
        out = self.model.generate(
            input_ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            tokenizer=self.tokenizer,
            **generate_kwargs,
        )
        n = out.shape[0] // len(items)
        return [
            [self._record(item, out[i * n + j, width:], options) for j in range(n)]
            for i, item in enumerate(items)
        ]

    def _record(self, item: Any, new_ids: torch.Tensor, options: dict) -> dict:
        if options.get("return_tensors"):
            return {"generated_token_ids": new_ids.tolist()}
        skip = options.get("skip_special_tokens", True)
        text = self.tokenizer.decode(
            new_ids.tolist(),
            skip_special_tokens=skip,
            clean_up_tokenization_spaces=options.get("clean_up_tokenization_spaces"),
        )
        if not options.get("return_full_text", True):
            return {"generated_text": text}
        if isinstance(item, str):
            return {"generated_text": item + text}
        messages = [dict(m) for m in item]
        cont = options.get("continue_final_message")
        if cont is None:
            cont = messages[-1].get("role") == "assistant"
        if cont:
            messages[-1]["content"] = messages[-1]["content"] + text
            return {"generated_text": messages}
        return {"generated_text": messages + [{"role": "assistant", "content": text}]}


_UNSET = object()


class TextClassificationPipeline:
    """Call with a text, a {"text", "text_pair"} dict, or a list of them; scores per label as
    transformers' pipeline gives them (softmax / sigmoid / none by config.problem_type and num_labels,
    or `function_to_apply`; `top_k` labels sorted by score, top_k=None: all)."""

    task = "text-classification"
    _FUNCTIONS = ("softmax", "sigmoid", "none")

    def __init__(self, model, tokenizer, function_to_apply: str | None = None, top_k: Any = _UNSET, **kwargs):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = {"function_to_apply": function_to_apply, "top_k": top_k}
        self.tokenizer_kwargs = kwargs

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, inputs: Any, **kwargs) -> list:
        function = kwargs.pop("function_to_apply", self.defaults["function_to_apply"])
        top_k = kwargs.pop("top_k", self.defaults["top_k"])
        legacy = top_k is _UNSET  # no top_k: one {label, score} per input (transformers' old output)
        if isinstance(function, str):
            function = function.lower()
            if function not in self._FUNCTIONS:
                raise GenerationError(
                    f"function_to_apply={function!r} is not one of {', '.join(self._FUNCTIONS)}."
                )
        tokenizer_kwargs = {**self.tokenizer_kwargs, **kwargs}
        if isinstance(inputs, (str, dict)):
            result = self._one(inputs, function, top_k, legacy, tokenizer_kwargs)
            return [result] if legacy and isinstance(inputs, str) else result
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise GenerationError(
                "text-classification inputs are a string, a {'text', 'text_pair'} dict, or a list."
            )
        return [self._one(item, function, top_k, legacy, tokenizer_kwargs) for item in inputs]

    def _one(self, item: Any, function: str | None, top_k: Any, legacy: bool, tokenizer_kwargs: dict):
        if isinstance(item, dict):
            encoded = self.tokenizer(**item, return_tensors="pt", **tokenizer_kwargs)
        elif isinstance(item, str):
            encoded = self.tokenizer(item, return_tensors="pt", **tokenizer_kwargs)
        else:
            raise GenerationError(
                "The pipeline received invalid inputs; to send text pairs, send a dict "
                '{"text": "My text", "text_pair": "My pair"}.'
            )
        inputs = {
            k: v.to(self.model.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")
        }
        with torch.no_grad():
            logits = self.model(**inputs, use_cache=False).logits[0].float()
        config = self.model.config
        if function is None:
            problem = getattr(config, "problem_type", None)
            if problem == "regression":
                function = "none"
            elif problem == "multi_label_classification" or config.num_labels == 1:
                function = "sigmoid"
            elif problem == "single_label_classification" or config.num_labels > 1:
                function = "softmax"
            else:
                function = getattr(config, "function_to_apply", "none")
        if function == "sigmoid":
            scores = torch.sigmoid(logits)
        elif function == "softmax":
            scores = torch.softmax(logits, -1)
        else:
            scores = logits
        scores = scores.tolist()
        if legacy:
            best = max(range(len(scores)), key=scores.__getitem__)
            return {"label": config.id2label[best], "score": scores[best]}
        ranked = [{"label": config.id2label[i], "score": s} for i, s in enumerate(scores)]
        ranked.sort(key=lambda x: x["score"], reverse=True)
        return ranked if top_k is None else ranked[:top_k]
