"""The text-generation pipeline: a prompt or chat messages in, `[{"generated_text": ...}]` out (built on
`generate`)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GenerationError

# __call__ arguments that shape the pipeline's input/output rather than generation
_PIPELINE_ARGS = {
    "return_full_text",
    "return_tensors",
    "batch_size",
    "prefix",
    "add_special_tokens",
    "continue_final_message",
    "skip_special_tokens",
    "clean_up_tokenization_spaces",
}


def _is_chat(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) for m in value)


class TextGenerationPipeline:
    """Call with a prompt, a conversation (list of {"role", "content"}), or a list of either."""

    task = "text-generation"

    def __init__(self, model, tokenizer, **generate_defaults):
        self.model = model
        self.tokenizer = tokenizer
        self.generate_defaults = generate_defaults
        self.generation_config = model.generation_config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, text_inputs: Any, **kwargs) -> list:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _PIPELINE_ARGS}
        generate_kwargs = {**self.generate_defaults, **kwargs}
        config = self.model.generation_config
        if (
            "max_new_tokens" not in generate_kwargs
            and "max_length" not in generate_kwargs
            and getattr(config, "max_new_tokens", None) is None
        ):
            generate_kwargs["max_new_tokens"] = 256  # transformers' pipeline default
        if getattr(config, "pad_token_id", None) is None and "pad_token_id" not in generate_kwargs:
            pad = getattr(self.tokenizer, "pad_token_id", None)
            if pad is not None:
                generate_kwargs["pad_token_id"] = pad

        single = isinstance(text_inputs, str) or _is_chat(text_inputs)
        items = [text_inputs] if single else list(text_inputs)
        if not items:
            raise GenerationError("The pipeline got an empty list of inputs; pass a string or messages.")
        batch_size = options.pop("batch_size", 1) or 1
        results = []
        for start in range(0, len(items), batch_size):
            results.extend(self._run_batch(items[start : start + batch_size], options, generate_kwargs))
        return results[0] if single else results

    def _encode(self, item: Any, options: dict) -> list[int]:
        if _is_chat(item):
            messages = list(item)
            cont = options.get("continue_final_message")
            if cont is None:
                cont = messages[-1].get("role") == "assistant"
            return self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=not cont,
                continue_final_message=cont,
                tokenize=True,
                return_dict=False,
            )
        if not isinstance(item, str):
            raise GenerationError(
                f"text-generation inputs are strings or lists of {{'role', 'content'}} messages; got {type(item).__name__}."
            )
        encode_kwargs = {}
        if options.get("add_special_tokens") is not None:
            encode_kwargs["add_special_tokens"] = options["add_special_tokens"]
        return self.tokenizer(options.get("prefix", "") + item, **encode_kwargs)["input_ids"]

    def _run_batch(self, items: list, options: dict, generate_kwargs: dict) -> list[list[dict]]:
        encoded = [list(self._encode(item, options)) for item in items]
        width = max(len(ids) for ids in encoded)
        pad = generate_kwargs.get("pad_token_id", getattr(self.tokenizer, "pad_token_id", None)) or 0
        # left padding: every prompt ends at the same column, where generation starts
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], dtype=torch.long)
        out = self.model.generate(
            input_ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            tokenizer=self.tokenizer,
            **generate_kwargs,
        )
        n = out.shape[0] // len(items)
        return [
            [self._record(item, out[i * n + j, width:], options) for j in range(n)]
            for i, item in enumerate(items)
        ]

    def _record(self, item: Any, new_ids: torch.Tensor, options: dict) -> dict:
        if options.get("return_tensors"):
            return {"generated_token_ids": new_ids.tolist()}
        skip = options.get("skip_special_tokens", True)
        text = self.tokenizer.decode(
            new_ids.tolist(),
            skip_special_tokens=skip,
            clean_up_tokenization_spaces=options.get("clean_up_tokenization_spaces"),
        )
        if not options.get("return_full_text", True):
            return {"generated_text": text}
        if isinstance(item, str):
            return {"generated_text": item + text}
        messages = [dict(m) for m in item]
        cont = options.get("continue_final_message")
        if cont is None:
            cont = messages[-1].get("role") == "assistant"
        if cont:
            messages[-1]["content"] = messages[-1]["content"] + text
            return {"generated_text": messages}
        return {"generated_text": messages + [{"role": "assistant", "content": text}]}
