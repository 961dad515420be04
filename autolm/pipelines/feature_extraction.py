"""The feature-extraction pipeline: a base model's last hidden states for a text."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GenerationError
from .inputs import forward


class FeatureExtractionPipeline:
    """Call with a text (or a list); returns (1, tokens, hidden) as nested lists, as transformers'
    pipeline does, or a tensor with `return_tensors=True`. `truncation` and `tokenize_kwargs` go to the
    tokenizer."""

    task = "feature-extraction"

    def __init__(
        self, model, tokenizer, truncation: Any = None, tokenize_kwargs=None, return_tensors=False, **kwargs
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = {
            "truncation": truncation,
            "tokenize_kwargs": tokenize_kwargs,
            "return_tensors": return_tensors,
        }

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, inputs: str | list[str], **kwargs) -> Any:
        truncation = kwargs.pop("truncation", self.defaults["truncation"])
        tokenize_kwargs = dict(kwargs.pop("tokenize_kwargs", self.defaults["tokenize_kwargs"]) or {})
        return_tensors = kwargs.pop("return_tensors", self.defaults["return_tensors"])
        if truncation is not None:
            if "truncation" in tokenize_kwargs:
                raise GenerationError("truncation is given twice (as an argument and in tokenize_kwargs).")
            tokenize_kwargs["truncation"] = truncation
        if isinstance(inputs, str):
            return self._one(inputs, tokenize_kwargs, return_tensors)
        return [self._one(text, tokenize_kwargs, return_tensors) for text in inputs]

    def _one(self, text: str, tokenize_kwargs: dict, return_tensors: bool):
        encoded = self.tokenizer(text, return_tensors="pt", **tokenize_kwargs)
        features = forward(self.model, encoded)[0]
        return features if return_tensors else features.tolist()
