"""What the encoder pipelines share: the tokenizer outputs a model takes, and one forward without grads."""

from __future__ import annotations

import inspect

import torch

# tokenizer outputs that are model inputs (the rest, offsets or special-token masks, are the pipeline's)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def model_inputs(model, encoded) -> dict[str, torch.Tensor]:
    """The tensors of `encoded` the model's forward takes (named, or through **kwargs), on its device."""
    params = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {
        k: v.to(model.device) for k, v in encoded.items() if k in MODEL_INPUTS and (k in params or takes_any)
    }


def forward(model, encoded, **kwargs):
    """The model's outputs for `encoded` (a tokenizer's "pt" output), in inference mode."""
    with torch.inference_mode():
        return model(**model_inputs(model, encoded), **kwargs)
