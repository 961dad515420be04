"""The translation pipeline (`translation`, `translation_xx_to_yy`): text2text-generation with
`[{"translation_text": ...}]` out and the task's entry of `config.task_specific_params` (T5's
"translation_en_to_de" brings the prefix "translate English to German: ")."""

from __future__ import annotations

import logging

from .text2text_generation import Text2TextGenerationPipeline

logger = logging.getLogger("autolm")


class TranslationPipeline(Text2TextGenerationPipeline):
    """Call with a text or a list of texts; see `Text2TextGenerationPipeline` for the arguments.

    `pipeline("translation_en_to_de", ...)` applies `task_specific_params["translation_en_to_de"]`; plain
    `pipeline("translation", ...)` the model's first `translation_*` entry, as transformers did.
    """

    task = "translation"
    return_name = "translation"

    def __init__(
        self, model, tokenizer, src_lang: str | None = None, tgt_lang: str | None = None, **defaults
    ):
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self._task_key = self._choose_task(model)
        super().__init__(model, tokenizer, **defaults)

    def _choose_task(self, model) -> str:
        if self.src_lang is not None and self.tgt_lang is not None:
            return f"translation_{self.src_lang}_to_{self.tgt_lang}"
        for key in getattr(model.config, "task_specific_params", None) or {}:
            if key.startswith("translation"):
                logger.warning('"translation" names no languages; using the model\'s "%s" settings.', key)
                return key
        return "translation"

    @property
    def task_key(self) -> str:
        return self._task_key

    def check_inputs(self, input_length: int, min_length: int, max_length: int) -> None:
        if input_length > 0.9 * max_length:
            logger.warning(
                "The input is %d tokens, more than 0.9 * max_length (%d); the translation may be cut short. "
                "Consider a larger max_length, e.g. max_length=400.",
                input_length,
                max_length,
            )
