"""The text-classification pipeline (alias sentiment-analysis): label scores from a sequence
classification head."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GenerationError
from .inputs import forward

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
        logits = forward(self.model, encoded, use_cache=False).logits[0].float()
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
