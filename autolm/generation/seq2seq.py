"""Encoder-decoder generation (T5 and the like): the encoder runs once, then the decoder is decoded as a
causal LM over its own ids, starting from `decoder_start_token_id`.

The loop, processors, sampling and beam search are the causal ones (`loop.run`, `beam.beam_search`);
only the decoder state differs: `Seq2SeqDecoder` keeps the encoder output and the model's cache (its
self-attention keys/values grow per token, the cross-attention ones are computed once from the encoder
output). The returned ids are the decoder's, start token first, as transformers returns them.
"""

from __future__ import annotations

import functools

import torch

from .. import kernels
from ..errors import GenerationError
from ..modeling_utils import ModelOutput
from .loop import _Decoder
from .settings import as_batch

# generate() inputs of an encoder-decoder model besides the encoder's input_ids / attention_mask
INPUTS = ("decoder_input_ids", "decoder_attention_mask", "encoder_outputs")


def is_encoder_decoder(model) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False)) and hasattr(
        model, "get_encoder"
    )


def pop_inputs(kwargs: dict) -> dict:
    return {name: kwargs.pop(name) for name in INPUTS if name in kwargs}


def start_token(model, config) -> int:
    """decoder_start_token_id from the settings, else the model's config, else bos (transformers' order)."""
    for value in (
        config.decoder_start_token_id,
        getattr(model.config, "decoder_start_token_id", None),
        config.bos_token_id,
    ):
        if value is not None:
            return int(value[0] if isinstance(value, (list, tuple)) else value)
    raise GenerationError(
        "Encoder-decoder generation needs decoder_start_token_id (or bos_token_id): pass "
        "decoder_start_token_id=... (0 for T5) or set it in config.json / generation_config.json."
    )


def encode(model, inputs, attention_mask, extra: dict):
    """(encoder output (B, S, d), its mask or None when nothing is padded)."""
    encoder_outputs = extra.get("encoder_outputs")
    if encoder_outputs is None:
        input_ids, attention_mask = as_batch(inputs, attention_mask)
        input_ids = input_ids.to(model.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(model.device)
        with torch.inference_mode():
            encoder_outputs = model.get_encoder()(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True
            )
    hidden = (
        encoder_outputs.last_hidden_state if isinstance(encoder_outputs, ModelOutput) else encoder_outputs[0]
    )
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask, device=hidden.device)
        if bool(attention_mask.all()):
            attention_mask = None
    return hidden, attention_mask


def decoder_prompt(model, config, batch: int, extra: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoder's first ids (B, P): the start token, or the user's decoder_input_ids with the start
    token put in front when they lack it (transformers' rule)."""
    start = start_token(model, config)
    first = torch.full((batch, 1), start, dtype=torch.long, device=model.device)
    ids, mask = extra.get("decoder_input_ids"), extra.get("decoder_attention_mask")
    if ids is None:
        return first, None
    ids = torch.as_tensor(ids, device=model.device)
    ids = ids[None] if ids.dim() == 1 else ids
    if bool((ids[:, 0] != start).all()):
        ids = torch.cat([first, ids], dim=1)
        if mask is not None:
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    return ids, mask


def prepare(model, inputs, attention_mask, config, tokenizer, processors, criteria, extra: dict):
    """The plan over the decoder's ids and the decoder state class for `loop.run` / `beam_search`."""
    from .loop import _planned

    hidden, mask = encode(model, inputs, attention_mask, extra)
    decoder_ids, decoder_mask = decoder_prompt(model, config, hidden.shape[0], extra)
    plan = _planned(model, decoder_ids, decoder_mask, config, tokenizer, processors, criteria)
    n = plan.input_ids.shape[0] // hidden.shape[0]
    if n > 1:  # one copy of the encoder output per beam / returned sequence, as transformers expands it
        hidden = hidden.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0) if mask is not None else None
    return plan, functools.partial(Seq2SeqDecoder, encoder_hidden=hidden, encoder_mask=mask)


class Seq2SeqDecoder(_Decoder):
    """The decoder's state for one generate call; `choose` and `finished` are the causal loop's."""

    def __init__(self, model, plan, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor | None):
        self.model, self.plan = model, plan
        input_ids, mask = plan.input_ids, plan.attention_mask
        B, P = input_ids.shape
        self.prompt_len = P
        total = P + plan.max_new_tokens
        self.device = input_ids.device
        if self.device.type == "cpu":
            kernels.ensure_loaded(compile=False)
        self.sequences = torch.empty(B, total, dtype=torch.long, device=self.device)
        self.sequences[:, :P] = input_ids
        self.unfinished = torch.ones(B, dtype=torch.bool, device=self.device)
        self.pad = torch.tensor(plan.pad_token_id, device=self.device)
        self.native = None
        self.encoder = (encoder_hidden,)
        self.encoder_mask = encoder_mask
        self.full_mask = None
        if mask is not None:  # the decoder's padding mask, grown by a column of ones per step
            self.full_mask = torch.ones(B, total, dtype=mask.dtype, device=self.device)
            self.full_mask[:, :P] = mask
        self.use_cache = bool(plan.config.use_cache)
        out = self._forward(input_ids, None, P)
        self.cache = out.past_key_values if self.use_cache else None
        self.logits = out.logits[:, -1].float()

    def _forward(self, ids: torch.Tensor, cache, length: int):
        return self.model(
            encoder_outputs=self.encoder,
            attention_mask=self.encoder_mask,
            decoder_input_ids=ids,
            decoder_attention_mask=self.full_mask[:, :length] if self.full_mask is not None else None,
            past_key_values=cache,
            use_cache=self.use_cache,
        )

    def advance(self, token: torch.Tensor, step: int) -> None:
        length = self.prompt_len + step + 1  # decoder ids so far, the new token included
        if self.cache is not None:
            native = self.native and self._native_step(token, length)
            if native is not None:
                self.logits = native
                return
            out = self._forward(token[:, None], self.cache, length)
        else:  # no cache: run the decoder over all its ids again
            out = self._forward(self.sequences[:, :length], None, length)
        self.logits = out.logits[:, -1].float()

    def _native_step(self, token: torch.Tensor, length: int) -> torch.Tensor | None:
        """The logits of autolm's native decode step (`kernels.decoder`), or None where it does not
        apply: the step runs on the self-attention cache, with the cached encoder keys/values."""
        self_cache = getattr(self.cache, "self_attention_cache", None)
        cross = getattr(self.cache, "cross_attention_cache", None)
        if self_cache is None or not cross:
            return None
        mask = self.full_mask[:, :length] if self.full_mask is not None else None
        return self.native.step(token, None, mask, self_cache, cross_kv=cross, cross_mask=self.encoder_mask)
