"""The summarization pipeline: text2text-generation with `[{"summary_text": ...}]` out and the
"summarization" entry of `config.task_specific_params` (T5: prefix "summarize: ", beam search settings)."""

from __future__ import annotations

import logging

from .text2text_generation import Text2TextGenerationPipeline

logger = logging.getLogger("autolm")


class SummarizationPipeline(Text2TextGenerationPipeline):
    """Call with a document or a list of documents; see `Text2TextGenerationPipeline` for the arguments."""

    task = "summarization"
    return_name = "summary"

    def check_inputs(self, input_length: int, min_length: int, max_length: int) -> None:
        if max_length < min_length:
            logger.warning("min_length=%d is larger than max_length=%d.", min_length, max_length)
        if input_length < max_length:
            logger.warning(
                "max_length is %d but the input is only %d tokens; a summary is usually shorter than its input, "
                "so consider a smaller max_length, e.g. max_length=%d.",
                max_length,
                input_length,
                input_length // 2,
            )
