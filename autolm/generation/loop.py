"""The decoding loop: `prefill`, `decode_one_token`, and the generator `generate_tokens` that yields each step.

`generate` collects the generator into a tensor; streamers, pipelines, `chat` and the CLI consume it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .. import kernels
from ..configuration import GenerationConfig
from ..errors import GenerationError
from ..kernels.decoder import NativeDecoder, native_decoder
from ..modeling_utils import ModelOutput
from ..models.cache import DynamicCache, StaticCache
from . import sampling
from .beam import beam_search
from .layout import prepare_for_decoding
from .processors import apply, processors_for
from .settings import Plan, make_plan, merge_settings
from .stopping import StoppingCriteriaList

_compiled_decode = None


def prefill(model, input_ids, attention_mask, position_ids, cache, cache_position=None) -> torch.Tensor:
    """Run the prompt through the model, filling `cache`; return float32 logits (B, vocab) for the next token."""
    out = model(
        input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=1,  # the lm_head runs on the last position only
        cache_position=cache_position,
    )
    return out.logits[:, -1].float()


def decode_one_token(model, token, position_ids, mask, cache, cache_position=None) -> torch.Tensor:
    """One new token per row, (B,), through the cached model -> float32 logits (B, vocab)."""
    out = model(
        token[:, None],
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        cache_position=cache_position,
    )
    return out.logits[:, -1].float()


def compiled_decode_one_token():
    """`decode_one_token` under torch.compile (built on first use; shapes are static with a StaticCache)."""
    global _compiled_decode
    if _compiled_decode is None:
        _compiled_decode = torch.compile(decode_one_token, dynamic=False)
    return _compiled_decode


def generate_tokens(
    model,
    input_ids: torch.Tensor | list,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    tokenizer=None,
    **kwargs,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, a LongTensor (B * num_return_sequences,), one step at a time.

    Rows that have finished (eos, a stop string) get `pad_token_id`. The generator ends when every row
    has finished or `max_new_tokens` is reached. Takes the same settings as `generate`.

    Raises:
        GenerationError: bad settings or prompt (raised on the first `next()`).
    """
    processors, criteria = kwargs.pop("logits_processor", None), kwargs.pop("stopping_criteria", None)
    extra = seq2seq.pop_inputs(kwargs) if seq2seq.is_encoder_decoder(model) else None
    config = merge_settings(model, generation_config, kwargs)
    plan, decoder_cls = _plan_for(
        model, input_ids, attention_mask, config, tokenizer, processors, criteria, extra
    )
    if plan.num_beams > 1:
        raise GenerationError("generate_tokens yields one token per row: use generate() for beam search.")
    yield from run(model, plan, decoder_cls=decoder_cls)


def _plan_for(model, input_ids, attention_mask, config, tokenizer, processors, criteria, extra):
    """(plan, decoder state class): an encoder-decoder model's plan is over its decoder's ids."""
    if extra is not None:
        return seq2seq.prepare(
            model, input_ids, attention_mask, config, tokenizer, processors, criteria, extra
        )
    return _planned(model, input_ids, attention_mask, config, tokenizer, processors, criteria), _Decoder


def _planned(model, input_ids, attention_mask, config, tokenizer, processors, criteria) -> Plan:
    plan = make_plan(model, input_ids, attention_mask, config, tokenizer)
    plan.processors = processors_for(plan, list(processors or []))
    plan.criteria = StoppingCriteriaList(criteria) if criteria else None
    return plan


def _make_cache(model, batch_size: int, max_cache_len: int | None = None):
    """The model's own cache (windows per layer are its business); a model without `make_cache` (a
    user's class) gets a plain one."""
    make = getattr(model, "make_cache", None)
    if make is not None:
        return make(batch_size, max_cache_len)
    if max_cache_len is None:
        return DynamicCache()
    return StaticCache(model.config, batch_size, max_cache_len, device=model.device, dtype=model.dtype)


def _positions(mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position ids (B, L): with padding, count real tokens only (left padding keeps rows aligned);
    padding gets 0, as in transformers 5 (it matters for a right-padded prompt's last position)."""
    if mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 0)


def _prompt_mask(mask: torch.Tensor | None, kv_len: int) -> torch.Tensor | None:
    """For a right-padded prompt, transformers' 4D prefill mask (B, 1, P, kv_len): causal over real
    tokens only, so the padding query that predicts the first token does not see itself (a query with
    nothing to see, left padding, sees itself). None otherwise: the model builds its own."""
    if mask is None or bool(mask[:, -1].all()):
        return None
    B, P = mask.shape
    q = torch.arange(P, device=mask.device)[:, None]
    k = torch.arange(kv_len, device=mask.device)[None, :]
    keep = torch.zeros(B, kv_len, dtype=torch.bool, device=mask.device)
    keep[:, :P] = mask.bool()
    full = (k <= q)[None, None] & keep[:, None, None, :]
    empty = ~full.any(dim=-1, keepdim=True)
    return full | (empty & (k == q)[None, None])


class _Decoder:
    """The state of one decoding run: the cache, the ids so far, which rows are still going."""

    def __init__(self, model, plan: Plan):
        self.model, self.plan = model, plan
        input_ids, mask = plan.input_ids, plan.attention_mask
        B, P = input_ids.shape
        self.prompt_len = P
        total = P + plan.max_new_tokens
        device = self.device = input_ids.device
        if device.type == "cpu":
            # when already built: the prompt's last product uses them; else built in the background
            kernels.ensure_loaded(compile=False)
        # all ids so far (the repetition penalty and stop strings read them)
        self.sequences = torch.empty(B, total, dtype=torch.long, device=device)
        self.sequences[:, :P] = input_ids
        positions = _positions(mask, B, P, device)
        self.next_position = positions[:, -1:] + 1  # (B, 1); after right padding 1, as transformers
        self.positions = torch.empty(B, total, dtype=torch.long, device=device)  # for the no-cache path
        self.positions[:, :P] = positions
        self.unfinished = torch.ones(B, dtype=torch.bool, device=device)
        self.pad = torch.tensor(plan.pad_token_id, device=device)
        self.cache = None
        self.native: NativeDecoder | None = None  # set after the first token (see run)
        # the length at which the model's positions all change meaning, so the cache is dropped and the
        # whole sequence run again (Phi-3's longrope switching to its long factors); None: never
        rerun = getattr(model, "rerun_length", None)
        self.rerun_at = rerun() if rerun is not None and P < total else None
        if plan.static_cache:
            cache_len = -(-total // 256) * 256  # rounded up, so nearby lengths share a compiled graph
            self.cache = _make_cache(model, B, cache_len)
            # (B, cache_len) True where a slot holds a real token; each step marks its slot. The model
            # builds its masks (causal, windows per layer) from it and the slot positions.
            self.valid = torch.zeros(B, cache_len, dtype=torch.bool, device=device)
            self.valid[:, :P] = True if mask is None else mask.bool()
            self.decode = compiled_decode_one_token() if plan.compile else decode_one_token
            prompt_mask = _prompt_mask(mask, cache_len)
            self.logits = prefill(
                model,
                input_ids,
                self.valid if prompt_mask is None else prompt_mask,
                positions,
                self.cache,
                torch.arange(P, device=device),
            )
            return
        self.full_mask = None
        if mask is not None:  # the padding mask, grown by a column of ones per step
            self.full_mask = torch.ones(B, total, dtype=mask.dtype, device=device)
            self.full_mask[:, :P] = mask
        if plan.config.use_cache:
            self.cache = _make_cache(model, B)
        prompt_mask = _prompt_mask(mask, P)
        self.logits = prefill(
            model, input_ids, mask if prompt_mask is None else prompt_mask, positions, self.cache
        )

    def choose(self, step: int, scores: list | None, logits: list | None = None) -> torch.Tensor:
        """The next token of every row (pad for finished rows), recorded in `sequences`."""
        length = self.prompt_len + step
        if logits is not None:
            logits.append(self.logits)
        step_scores = apply(self.plan.processors, self.sequences[:, :length], self.logits)
        self.scores = scores
        if scores is not None:
            scores.append(step_scores)
        token = sampling.sample(step_scores, self.plan.config.do_sample)
        token = torch.where(self.unfinished, token, self.pad)
        self.sequences[:, length] = token
        return token

    def finished(self, token: torch.Tensor, step: int) -> bool:
        plan = self.plan
        if plan.eos is not None:
            self.unfinished &= ~torch.isin(token, plan.eos)
        if plan.stop is not None:
            self.unfinished &= ~plan.stop(self.sequences[:, : self.prompt_len + step + 1])
        if plan.criteria is not None:
            seen = tuple(self.scores) if getattr(self, "scores", None) is not None else None
            self.unfinished &= ~plan.criteria(self.sequences[:, : self.prompt_len + step + 1], seen)
        return step == plan.max_new_tokens - 1 or not bool(self.unfinished.any())

    def advance(self, token: torch.Tensor, step: int) -> None:
        """Run the model on the chosen token, leaving the logits for the next step."""
        length = self.prompt_len + step  # the slot the token goes into
        model, cache = self.model, self.cache
        self.positions[:, length : length + 1] = self.next_position
        if cache is not None and length + 1 == self.rerun_at:
            self.logits = self.rerun(length + 1)
        elif self.plan.static_cache:
            self.valid[:, length] = True
            # set before the call too, so a compiled step always finds a (1,) tensor there
            cache.cache_position = slot = torch.tensor([length], device=self.device)
            native = self.native and self.native.step(token, self.next_position, self.valid, cache, slot)
            self.logits = (
                self.decode(model, token, self.next_position, self.valid, cache, slot)
                if native is None
                else native
            )
        elif cache is not None:
            mask = self.full_mask[:, : length + 1] if self.full_mask is not None else None
            native = self.native and self.native.step(token, self.next_position, mask, cache)
            self.logits = (
                decode_one_token(model, token, self.next_position, mask, cache) if native is None else native
            )
        else:  # no cache: run the whole sequence again
            mask = self.full_mask[:, : length + 1] if self.full_mask is not None else None
            positions = self.positions[:, : length + 1]
            self.logits = prefill(model, self.sequences[:, : length + 1], mask, positions, None)
        self.next_position = self.next_position + 1

    def rerun(self, n: int) -> torch.Tensor:
        """A fresh cache filled by the first `n` tokens of every row; the logits after them."""
        ids, positions = self.sequences[:, :n], self.positions[:, :n]
        if self.plan.static_cache:
            self.valid[:, n - 1] = True
            self.cache = _make_cache(self.model, ids.shape[0], self.cache.max_cache_len)
            slots = torch.arange(n, device=self.device)
            return prefill(self.model, ids, self.valid, positions, self.cache, slots)
        mask = self.full_mask[:, :n] if self.full_mask is not None else None
        self.cache = _make_cache(self.model, ids.shape[0])
        prompt_mask = _prompt_mask(mask, n)
        return prefill(self.model, ids, mask if prompt_mask is None else prompt_mask, positions, self.cache)


def run(
    model,
    plan: Plan,
    scores: list[torch.Tensor] | None = None,
    logits: list[torch.Tensor] | None = None,
    decoder_cls=None,
) -> Iterator[torch.Tensor]:
    """The loop itself, for a plan from `make_plan`. Appends processed scores to `scores` and the raw
    logits to `logits` when given. `decoder_cls`: the decoding state (an encoder-decoder model's, see
    `seq2seq`), the causal one by default.

    Inference mode is entered around each step only, so the caller's code between steps runs normally.
    """
    with torch.inference_mode():
        decoder = (decoder_cls or _Decoder)(model, plan)
    waiting = False  # for a background kernel build (see kernels.build_in_background)
    for step in range(plan.max_new_tokens):
        with torch.inference_mode():
            token = decoder.choose(step, scores, logits)
        yield token
        with torch.inference_mode():
            if decoder.finished(token, step):
                return
        # Lay the weights out for decoding once the first token is out (TTFT does not pay for it), and
        # again when a kernel build that was running in the background has finished.
        if step == 0 or (waiting and not kernels.building()):
            prepare_for_decoding(model, compiled=plan.compile)
            # autolm's native step when it covers this model (on CPU it beats torch.compile's code too)
            decoder.native = native_decoder(model)
            waiting = step == 0 and decoder.native is None and kernels.pending()
        with torch.inference_mode():
            decoder.advance(token, step)


def generate(
    model,
    inputs: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    streamer=None,
    tokenizer=None,
    **kwargs,
) -> torch.Tensor | ModelOutput:
    """Generate continuations of a batch of prompts, as transformers' `model.generate`.

    Args:
        model: a causal LM (`AutoModelForCausalLM.from_pretrained(...)`), or an encoder-decoder model
            (`AutoModelForSeq2SeqLM`): the inputs go to its encoder and the ids returned are its
            decoder's, from decoder_start_token_id on (decoder_input_ids=, encoder_outputs= accepted).
        inputs: prompt ids (B, P), left-padded for batches of different lengths (also `input_ids=`).
        attention_mask: (B, P) 1 for tokens, 0 for padding; position ids follow from it.
        generation_config: settings; defaults come from the model's generation_config.json.
        streamer: an object with `put(ids)` and `end()`, e.g. `TextStreamer`; gets the prompt, then each token.
        tokenizer: needed for `stop_strings`.
        **kwargs: any generation setting (max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
            repetition_penalty, eos_token_id, pad_token_id, stop_strings, num_return_sequences, min_new_tokens,
            max_length, use_cache, cache_implementation="static", compile=True, truncation=True, ...).

    Returns:
        LongTensor (B * num_return_sequences, P + new): prompts and new tokens; rows that finished early are
        padded with pad_token_id (eos when there is no pad). With return_dict_in_generate=True, an output
        with `.sequences` (and `.scores` when output_scores=True).

    Raises:
        GenerationError: unknown settings, an empty or too-long prompt, max_new_tokens <= 0, ...
    """
    if inputs is None:
        inputs = kwargs.pop("input_ids", None)
    if isinstance(inputs, Mapping):  # a BatchEncoding (a UserDict) or dict passed whole: the v4 habit
        attention_mask = inputs.get("attention_mask", attention_mask)
        inputs = inputs["input_ids"]
    processors, criteria = kwargs.pop("logits_processor", None), kwargs.pop("stopping_criteria", None)
    extra = seq2seq.pop_inputs(kwargs) if seq2seq.is_encoder_decoder(model) else None
    try:
        config = merge_settings(model, generation_config, kwargs)
        plan, decoder_cls = _plan_for(
            model, inputs, attention_mask, config, tokenizer, processors, criteria, extra
        )
        want_scores = bool(config.return_dict_in_generate and config.output_scores)
        want_logits = bool(config.return_dict_in_generate and config.output_logits)
        if plan.num_beams > 1:
            if streamer is not None:
                raise GenerationError("A streamer cannot be used with beam search (num_beams > 1).")
            beams = beam_search(model, plan, decoder_cls, want_scores, want_logits)
            if not config.return_dict_in_generate:
                return beams.sequences
            return ModelOutput(
                sequences=beams.sequences,
                sequences_scores=beams.sequences_scores if want_scores else None,
                scores=beams.scores,
                logits=beams.logits,
                beam_indices=beams.beam_indices,
            )
        if streamer is not None:
            streamer.put(plan.input_ids.cpu())
        scores: list[torch.Tensor] | None = [] if want_scores else None
        logits: list[torch.Tensor] | None = [] if want_logits else None
        new = [token for token in _streamed(run(model, plan, scores, logits, decoder_cls), streamer)]
        if streamer is not None:
            streamer.end()
    except Exception as exc:
        # a consumer reading the streamer in another thread must not wait forever
        report = getattr(streamer, "put_exception", None)
        if report is not None:
            report(exc)
        raise
    sequences = torch.cat([plan.input_ids, torch.stack(new, dim=1)], dim=1)
    if config.return_dict_in_generate:
        return ModelOutput(
            sequences=sequences,
            scores=tuple(scores) if scores is not None else None,
            logits=tuple(logits) if logits is not None else None,
        )
    return sequences


def _streamed(tokens: Iterator[torch.Tensor], streamer) -> Iterator[torch.Tensor]:
    for token in tokens:
        if streamer is not None:
            streamer.put(token.cpu())
        yield token


from . import seq2seq  # noqa: E402  (it builds on _Decoder above)
