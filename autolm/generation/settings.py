"""Resolving what one `generate` call should do: merged settings, checked inputs, and the derived plan."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

from ..configuration import GenerationConfig
from ..errors import GenerationError
from .sampling import check_sampling_settings
from .stopping import StopStrings, eos_ids

logger = logging.getLogger("autolm")

# Settings accepted besides the GenerationConfig attributes: autolm's own.
EXTRA_SETTINGS = {"compile": False, "truncation": False}
# Model inputs a tokenizer may return that these decoder-only models do not use.
IGNORED_INPUTS = {"token_type_ids"}


def merge_settings(model, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
    """As transformers: `generation_config` (or an empty one) < the model's generation_config.json for what
    it leaves None < transformers' global defaults for what is still None; kwargs override all."""
    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    base = getattr(model, "generation_config", None)
    if base is not None:
        for key, value in base.to_dict().items():
            if getattr(config, key, None) is None:
                setattr(config, key, value)
    # left alone everywhere: 20 new tokens, not 20 in all (transformers' has_default_max_length)
    config._default_max_length = config.max_length is None and kwargs.get("max_length") is None
    for key, value in GenerationConfig.global_defaults.items():
        if getattr(config, key, None) is None:
            setattr(config, key, value)
    for key, value in EXTRA_SETTINGS.items():
        if not hasattr(config, key):
            setattr(config, key, value)
    unknown = sorted(k for k in kwargs if not hasattr(config, k) and k not in IGNORED_INPUTS)
    if unknown:
        known = sorted(set(GenerationConfig.defaults) | set(EXTRA_SETTINGS))
        raise GenerationError(
            f"generate() got unknown arguments: {', '.join(unknown)}. "
            f"Generation settings are: {', '.join(known)} (plus attention_mask, streamer, tokenizer, "
            "logits_processor, stopping_criteria)."
        )
    for key, value in kwargs.items():
        if key not in IGNORED_INPUTS:
            setattr(config, key, value)
    return config


@dataclass
class Plan:
    """Everything the decoding loop needs, derived once per call."""

    input_ids: torch.Tensor  # (B * num_return_sequences, P)
    attention_mask: torch.Tensor | None  # None when no row is padded
    config: GenerationConfig
    eos: torch.Tensor | None  # (n_eos,) ids that end a row
    pad_token_id: int
    max_new_tokens: int
    min_new_tokens: int
    stop: StopStrings | None
    static_cache: bool
    compile: bool
    num_beams: int = 1
    min_tokens_to_keep: int = 1  # warpers keep this many tokens (beam sampling: one more than eos ids)
    processors: list = field(default_factory=list)  # (ids, scores) -> scores, see processors.processors_for
    criteria: list | None = None  # the user's stopping criteria: (ids, scores) -> (B,) bool


def as_batch(input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accept a LongTensor (B, P) or (P,), a list of ids, or a list of lists."""
    if input_ids is None:
        raise GenerationError(
            "generate() needs input_ids (the prompt's token ids, e.g. tokenizer(text).input_ids)."
        )
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.tensor(input_ids, dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        attention_mask = torch.tensor(attention_mask)
    if attention_mask is not None and attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise GenerationError(
            f"input_ids must be integer token ids of shape (batch, length), got {input_ids.dtype} "
            f"of shape {tuple(input_ids.shape)}."
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise GenerationError(
            f"The prompt is empty (input_ids of shape {tuple(input_ids.shape)}). Pass at least one token; "
            "for a model with a bos token, tokenizing an empty string with add_special_tokens=True gives one."
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise GenerationError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
            f"{tuple(input_ids.shape)}; they must match."
        )
    return input_ids, attention_mask


def make_plan(model, input_ids, attention_mask, config: GenerationConfig, tokenizer=None) -> Plan:
    input_ids, attention_mask = as_batch(input_ids, attention_mask)
    device = model.device
    input_ids = input_ids.to(device)
    beams = config.num_beams or 1
    if not isinstance(beams, int) or beams < 1:
        raise GenerationError(f"num_beams must be an int >= 1, got {config.num_beams!r}.")
    if (config.num_beam_groups or 1) > 1 or (config.diversity_penalty or 0.0) != 0.0:
        raise GenerationError(
            "num_beam_groups / diversity_penalty (group beam search) moved out of transformers 5 to the Hub "
            "and is not supported; use num_beams alone."
        )
    check_sampling_settings(config)
    if config.repetition_penalty is not None and config.repetition_penalty <= 0:
        raise GenerationError(
            f"repetition_penalty must be > 0 (1.0 is off), got {config.repetition_penalty!r}."
        )

    prompt_len = input_ids.shape[1]
    if config.max_new_tokens is not None:
        if not isinstance(config.max_new_tokens, int) or config.max_new_tokens <= 0:
            raise GenerationError(
                f"max_new_tokens must be a positive int, got {config.max_new_tokens!r}. "
                "To only score a prompt, call the model directly: model(input_ids).logits."
            )
        max_new = config.max_new_tokens
    else:
        max_length = config.max_length
        if not isinstance(max_length, int) or max_length <= 0:
            raise GenerationError(f"max_length must be a positive int, got {max_length!r}.")
        if getattr(config, "_default_max_length", False):
            # as transformers 5: by default 20 new tokens, within the model's context
            max_length = max_length + prompt_len
            context = getattr(model.config, "max_position_embeddings", None)
            if context is not None and prompt_len < context:  # a longer prompt: see truncation below
                max_length = min(max_length, context)
        if prompt_len >= max_length:
            raise GenerationError(
                f"The prompt has {prompt_len} tokens but max_length is {max_length} (prompt included): "
                "nothing to generate. Set max_new_tokens instead."
            )
        max_new = max_length - prompt_len
    for name in ("min_new_tokens", "min_length"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise GenerationError(f"{name} must be an int >= 0, got {value!r}.")
    min_new = max(config.min_new_tokens or 0, (config.min_length or 0) - prompt_len, 0)

    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and prompt_len >= context:
        if not config.truncation:
            raise GenerationError(
                f"The prompt has {prompt_len} tokens but the model's context is {context} "
                "(max_position_embeddings). Shorten the prompt, or pass truncation=True to keep its last "
                f"{max(context - max_new, 1)} tokens."
            )
        keep = max(context - max_new, 1)
        logger.warning("Truncating the prompt from %d to its last %d tokens.", prompt_len, keep)
        input_ids = input_ids[:, -keep:]
        attention_mask = attention_mask[:, -keep:] if attention_mask is not None else None
        prompt_len = keep
    elif context is not None and prompt_len + max_new > context:
        logger.warning(
            "prompt (%d tokens) + max_new_tokens (%d) exceeds the model's context (%d); quality may drop.",
            prompt_len,
            max_new,
            context,
        )

    eos = eos_ids(config.eos_token_id)
    pad = config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    stop = StopStrings(config.stop_strings, tokenizer) if config.stop_strings else None

    n = config.num_return_sequences or 1
    if n < 1:
        raise GenerationError(f"num_return_sequences must be >= 1, got {n}.")
    if beams > 1 and n > beams:
        raise GenerationError(
            f"num_return_sequences={n} is more than num_beams={beams}: beam search returns at most its "
            "beams. Raise num_beams or lower num_return_sequences."
        )
    if n > 1 and beams == 1 and not config.do_sample:
        raise GenerationError(
            f"num_return_sequences={n} with greedy decoding would return {n} identical rows. "
            "Pass do_sample=True for different samples, or num_beams >= num_return_sequences."
        )
    if beams > 1:
        n = beams  # every prompt's row is repeated once per beam
    if config.early_stopping not in (True, False, "never"):
        raise GenerationError(
            f"early_stopping must be True, False or 'never', got {config.early_stopping!r}."
        )
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: the plain causal path is faster
        elif bool((attention_mask[:, -1] == 0).any()):
            logger.warning(
                "A prompt ends in padding: right padding gives wrong results for decoder-only models. "
                "Use tokenizer.padding_side = 'left'."
            )
    if n > 1:
        input_ids = input_ids.repeat_interleave(n, dim=0)
        attention_mask = attention_mask.repeat_interleave(n, dim=0) if attention_mask is not None else None

    compile_ = bool(config.compile)
    static = compile_ or config.cache_implementation == "static"
    if static and not config.use_cache:
        raise GenerationError("A static cache or compile=True needs use_cache=True.")
    return Plan(
        input_ids=input_ids,
        attention_mask=attention_mask,
        config=config,
        eos=torch.tensor(eos, device=device) if eos else None,
        pad_token_id=int(pad),
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        stop=stop,
        static_cache=static,
        compile=compile_,
        num_beams=beams,
        min_tokens_to_keep=len(eos) + 1 if beams > 1 else 1,
    )
