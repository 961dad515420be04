"""The fill-mask pipeline: the likeliest tokens for each mask token of a text (a masked LM head)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import GenerationError
from .inputs import forward

logger = logging.getLogger("autolm")


class FillMaskPipeline:
    """Call with a text (or a list) holding the tokenizer's mask token; returns, per mask, the `top_k`
    {"score", "token", "token_str", "sequence"} as transformers' pipeline does (one mask: a flat list).
    `targets`: score only these words (a word outside the vocabulary counts as its first token)."""

    task = "fill-mask"

    def __init__(
        self, model, tokenizer, top_k: int = 5, targets: Any = None, tokenizer_kwargs=None, **kwargs
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = {"top_k": top_k, "targets": targets, "tokenizer_kwargs": tokenizer_kwargs or {}}
        if tokenizer.mask_token_id is None:
            raise GenerationError("fill-mask needs a tokenizer with a mask token; this one defines none.")

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, inputs: str | list[str], **kwargs) -> list:
        top_k = kwargs.pop("top_k", self.defaults["top_k"])
        targets = kwargs.pop("targets", self.defaults["targets"])
        tokenizer_kwargs = kwargs.pop("tokenizer_kwargs", self.defaults["tokenizer_kwargs"])
        target_ids = self.target_ids(targets) if targets is not None else None
        if isinstance(inputs, str):
            return self._one(inputs, top_k, target_ids, tokenizer_kwargs)
        results = [self._one(text, top_k, target_ids, tokenizer_kwargs) for text in inputs]
        return results[0] if len(results) == 1 else results

    def target_ids(self, targets: str | list[str]) -> torch.Tensor:
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in [targets] if isinstance(targets, str) else targets:
            id_ = vocab.get(target)
            if id_ is None:
                pieces = self.tokenizer(
                    target,
                    add_special_tokens=False,
                    return_attention_mask=False,
                    return_token_type_ids=False,
                    max_length=1,
                    truncation=True,
                )["input_ids"]
                if not pieces:
                    logger.warning("fill-mask target %r is not in the vocabulary; ignoring it", target)
                    continue
                id_ = pieces[0]
                logger.warning(
                    "fill-mask target %r is not in the vocabulary; using %r",
                    target,
                    self.tokenizer.convert_ids_to_tokens(id_),
                )
            ids.append(id_)
        ids = list(set(ids))  # transformers' order, so equal scores rank the same
        if not ids:
            raise GenerationError(
                "fill-mask got targets, but none of them is usable; pass at least one word."
            )
        return torch.tensor(ids)

    def _one(self, text: str, top_k: int, target_ids: torch.Tensor | None, tokenizer_kwargs: dict):
        if not isinstance(text, str):
            raise GenerationError(f"fill-mask inputs are strings, got {type(text).__name__}.")
        encoded = self.tokenizer(text, return_tensors="pt", **tokenizer_kwargs)
        input_ids = encoded["input_ids"][0]
        masked = torch.nonzero(input_ids == self.tokenizer.mask_token_id).squeeze(-1)
        if masked.numel() == 0:
            raise GenerationError(
                f"fill-mask found no mask token ({self.tokenizer.mask_token}) in {text!r}; put one in."
            )
        logits = forward(self.model, encoded).logits[0, masked].float()
        probs = logits.softmax(-1)
        if target_ids is not None:
            probs = probs[..., target_ids]
            top_k = min(top_k, len(target_ids))
        values, predictions = probs.topk(top_k)
        single = len(masked) == 1
        result = []
        for i, (scores, tokens) in enumerate(zip(values.tolist(), predictions.tolist())):
            row = []
            for score, token in zip(scores, tokens):
                if target_ids is not None:
                    token = int(target_ids[token])
                filled = input_ids.clone()
                filled[masked[i]] = token
                filled = filled[filled != self.tokenizer.pad_token_id]
                row.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": self.tokenizer.decode([token]),
                        "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=single),
                    }
                )
            result.append(row)
        return result[0] if single else result
