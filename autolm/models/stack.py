"""What every decoder-only stack's forward shares, around its own embeddings and layer calls: the
input checks, the output flags' defaults, the cache, gradient checkpointing, and the loop over the layers
that collects hidden states and attention weights into a ModelOutput.

A family's `XModel.forward` reads:

    run = StackRun.start(self, input_ids, inputs_embeds, past_key_values, use_cache,
                         output_hidden_states, output_attentions, kwargs)
    ...positions, masks, anything else the layers take, from run.x and run.cache...
    return run.finish(run.x, self.layers, (position_embeddings, masks), self.norm, return_dict)

and each layer is called as `layer(x, *args, cache, attentions)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AutolmValueError
from ..logging import warning_once
from ..modeling_utils import ModelOutput
from .cache import DynamicCache, StaticCache


class CacheMaker:
    """`make_cache` for a stack whose input embeddings give the cache's dtype and device."""

    def make_cache(self, batch_size: int, max_cache_len: int | None = None, dtype=None, device=None):
        """A DynamicCache, or with `max_cache_len` a StaticCache of that many slots per layer."""
        if max_cache_len is None:
            return DynamicCache()
        weight = self.get_input_embeddings().weight
        return StaticCache(
            self.config,
            batch_size,
            max_cache_len,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )


@dataclass
class StackRun:
    model: nn.Module
    x: torch.Tensor  # the token embeddings (B, T, hidden), or inputs_embeds
    cache: Any
    use_cache: bool
    output_hidden_states: bool
    output_attentions: bool
    checkpointing: bool

    @classmethod
    def start(
        cls,
        model,
        input_ids,
        inputs_embeds,
        past_key_values,
        use_cache,
        output_hidden_states,
        output_attentions,
        kwargs: dict,
    ) -> StackRun:
        if (input_ids is None) == (inputs_embeds is None):
            raise AutolmValueError("Pass exactly one of input_ids or inputs_embeds.")
        c = model.config
        cache = kwargs.get("cache", past_key_values)  # transformers 5's new name
        x = model.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = c.use_cache if use_cache is None else use_cache
        checkpointing = model.gradient_checkpointing and model.training and torch.is_grad_enabled()
        if checkpointing and use_cache:
            warning_once("use_cache=True is incompatible with gradient checkpointing; using use_cache=False.")
            use_cache = False
        if cache is None and use_cache:
            cache = model.make_cache(x.shape[0])
        return cls(
            model,
            x,
            cache,
            use_cache,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.output_attentions if output_attentions is None else output_attentions,
            checkpointing,
        )

    def finish(
        self, x: torch.Tensor, layers, args: tuple, final_norm: nn.Module, return_dict
    ) -> ModelOutput | tuple:
        """Run `x` (the embeddings after whatever the family adds) through the layers and the final norm."""
        hidden_states = [x] if self.output_hidden_states else None
        attentions: list | None = [] if self.output_attentions else None
        for layer in layers:
            if self.checkpointing:
                x = self.model._gradient_checkpointing_func(layer, x, *args, self.cache, attentions)
            else:
                x = layer(x, *args, self.cache, attentions)
            if hidden_states is not None:
                hidden_states.append(x)
        x = final_norm(x)
        if hidden_states is not None:
            hidden_states[-1] = x  # the last entry is the normed output, as in transformers
        out = ModelOutput(
            last_hidden_state=x,
            past_key_values=self.cache if self.use_cache else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
        return out if self.model.config.return_dict_for(return_dict) else out.to_tuple()
