"""The text2text-generation pipeline: text in, `[{"generated_text": ...}]` out, from an encoder-decoder
model's `generate` (T5 and the like).

It is the base of summarization and translation, which differ only in the output key, the task whose
`config.task_specific_params` they apply (a prefix such as "summarize: " and generation settings) and the
input-length hints they log. Transformers 5 dropped these three pipelines; their behaviour here is that of
transformers 4's, which code written for them expects.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import GenerationError

logger = logging.getLogger("autolm")

# __call__ arguments that shape the pipeline's input/output rather than generation
_PIPELINE_ARGS = (
    "return_tensors",
    "return_text",
    "return_type",
    "clean_up_tokenization_spaces",
    "truncation",
    "stop_sequence",
    "batch_size",
    "src_lang",
    "tgt_lang",
)


class Text2TextGenerationPipeline:
    """Call with a string or a list of strings; each gives `[{"generated_text": ...}]` (one dict per returned
    sequence), a list of one-dict results is flattened to a list of dicts, as in transformers.

    Call (and pipeline()) arguments: `return_tensors=True` gives `{"generated_token_ids": tensor}` instead
    of text; `clean_up_tokenization_spaces` (default False); `truncation` of the input (default none);
    `stop_sequence` (its first token becomes the eos); `batch_size` (inputs padded together); anything else
    goes to `generate` (max_new_tokens, num_beams, do_sample, ...). `return_text` is accepted and, as in
    transformers, changes nothing.
    """

    task = "text2text-generation"
    return_name = "generated"

    def __init__(self, model, tokenizer, **defaults: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = model.generation_config
        self.defaults = defaults
        # A copy of the task's settings: the model's config is left as it is
        params = dict(
            (getattr(model.config, "task_specific_params", None) or {}).get(self.task_key, None) or {}
        )
        self.prefix: str | None = params.pop("prefix", getattr(model.config, "prefix", None))
        self.task_settings = params
        if getattr(self.generation_config, "pad_token_id", None) is None:
            pad = getattr(tokenizer, "pad_token_id", None)
            if pad is not None:
                self.task_settings.setdefault("pad_token_id", pad)

    @property
    def task_key(self) -> str:
        """The key of `config.task_specific_params` this pipeline applies."""
        return self.task

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> list:
        kwargs = {**self.defaults, **kwargs}
        options = {k: kwargs.pop(k) for k in _PIPELINE_ARGS if k in kwargs}
        generate_kwargs = {**self.task_settings, **kwargs}
        if options.get("stop_sequence") is not None:
            ids = self.tokenizer.encode(options["stop_sequence"], add_special_tokens=False)
            if len(ids) > 1:
                logger.warning(
                    "stop_sequence %r is %d tokens; the pipeline stops on its first token only, as transformers.",
                    options["stop_sequence"],
                    len(ids),
                )
            generate_kwargs["eos_token_id"] = ids[0]
        single = isinstance(inputs, str)
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(t, str) for t in items):
            raise GenerationError(
                f"{self.task} inputs are a string or a non-empty list of strings; got {_describe(inputs)}."
            )
        batch_size = options.get("batch_size") or 1
        if batch_size > 1 and len(items) > 1 and self.tokenizer.pad_token_id is None:
            raise GenerationError(
                "Batching pads the inputs, but the tokenizer has no pad token. Set one, e.g. "
                "`pipe.tokenizer.pad_token = pipe.tokenizer.eos_token`, or call with batch_size=1."
            )
        results: list = []
        for start in range(0, len(items), batch_size):
            results.extend(self._run_batch(list(items[start : start + batch_size]), options, generate_kwargs))
        if single:
            return results[0]
        return [r[0] for r in results] if all(len(r) == 1 for r in results) else results

    def _run_batch(self, texts: list[str], options: dict, generate_kwargs: dict) -> list[list[dict]]:
        prefix = self.prefix or ""
        encoded = self.tokenizer(
            [prefix + t for t in texts],
            padding=len(texts) > 1,
            truncation=options.get("truncation", False),
            return_tensors="pt",
        )
        input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
        config = self.generation_config
        self.check_inputs(
            input_ids.shape[1],
            generate_kwargs.get("min_length", getattr(config, "min_length", 0)),
            generate_kwargs.get("max_length", getattr(config, "max_length", 20)),
        )
        out = self.model.generate(
            input_ids.to(self.model.device), attention_mask=mask.to(self.model.device), **generate_kwargs
        )
        n = out.shape[0] // len(texts)  # num_return_sequences per input
        return [[self._record(out[i * n + j], options) for j in range(n)] for i in range(len(texts))]

    def _record(self, ids: torch.Tensor, options: dict) -> dict:
        return_tensors = options.get("return_tensors")
        return_type = options.get("return_type")
        if return_type is None:
            return_type = "tensors" if return_tensors else "text"
        if str(getattr(return_type, "name", return_type)).lower() == "tensors":
            return {f"{self.return_name}_token_ids": ids.cpu()}
        text = self.tokenizer.decode(
            ids.tolist(),
            skip_special_tokens=True,
            clean_up_tokenization_spaces=options.get("clean_up_tokenization_spaces", False),
        )
        return {f"{self.return_name}_text": text}

    def check_inputs(self, input_length: int, min_length: int, max_length: int) -> None:
        """Log hints about the input's length against the generation limits (none for plain text2text)."""


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return (
            f"a {type(value).__name__} of {', '.join(kinds)}" if value else f"an empty {type(value).__name__}"
        )
    return type(value).__name__
