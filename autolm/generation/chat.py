"""`chat(model, tokenizer, query, history)`: one turn of a multi-turn conversation, for any chat template.

(`autolm.chat` is the function; this module is `autolm.generation.chat`.)

The Qwen-7B-Chat `model.chat` pattern as a plain function: it returns the reply and the history to pass
to the next turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ChatTemplateError

Message = dict[str, Any]


def _as_messages(history: list | None) -> tuple[list[Message], bool]:
    """History as message dicts; also accepts Qwen's [(query, response), ...]. Returns (messages, was_pairs)."""
    if not history:
        return [], False
    if all(isinstance(turn, (tuple, list)) and len(turn) == 2 for turn in history):
        messages: list[Message] = []
        for query, response in history:
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        return messages, True
    if all(isinstance(m, dict) for m in history):
        return [dict(m) for m in history], False
    raise ChatTemplateError(
        "history must be a list of {'role': ..., 'content': ...} messages or of (query, response) pairs; "
        f"got {[type(t).__name__ for t in history][:5]}."
    )


QWEN_SYSTEM = "You are a helpful assistant."


def _setting(model, generation_config, name: str, default=None):
    for config in (generation_config, getattr(model, "generation_config", None)):
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _special_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ChatTemplateError(
            f"chat_format 'chatml' needs the token {token!r}, which this tokenizer lacks: use the model's own "
            "tokenizer, or one with a chat template."
        )
    return int(token_id)


def chatml_context(
    tokenizer, query: str, history: list, system: str, max_window_size: int
) -> tuple[str, list[int]]:
    """Qwen-1's ChatML prompt, built from token ids as its `make_context` does: the system turn, then as
    many of the latest (query, response) pairs as keep the prompt under `max_window_size` tokens, then
    the query and the assistant's opening. Returns (the prompt's text, its token ids)."""
    start, end = _special_id(tokenizer, "<|im_start|>"), _special_id(tokenizer, "<|im_end|>")

    def encode(text: str) -> list[int]:
        # special-token text inside a message is text, never a control token (later Qwen revisions)
        return tokenizer.encode(text, allowed_special=set())

    newline = encode("\n")

    def turn(role: str, content: str) -> tuple[str, list[int]]:
        ids = [start, *encode(role), *newline, *encode(content), end]
        return f"<|im_start|>{role}\n{content}<|im_end|>", ids

    system_text, system_ids = turn("system", system)
    text, ids = "", []
    for old_query, old_response in reversed(history):
        (query_text, query_ids), (response_text, response_ids) = (
            turn("user", old_query),
            turn("assistant", old_response),
        )
        pair = [*newline, *query_ids, *newline, *response_ids]
        if len(system_ids) + len(pair) + len(ids) >= max_window_size:
            break
        ids, text = pair + ids, f"\n{query_text}\n{response_text}" + text
    query_text, query_ids = turn("user", query)
    ids = [*system_ids, *ids, *newline, *query_ids, *newline, start, *encode("assistant"), *newline]
    text = f"{system_text}{text}\n{query_text}\n<|im_start|>assistant\n"
    return text, ids


class _Turn:
    """One chat turn's prompt and how its reply is read back from the generated ids."""

    def __init__(self, model, tokenizer, query, history, system, generation_config):
        self.tokenizer, self.pairs = tokenizer, True
        chat_format = _setting(model, generation_config, "chat_format")
        self.chatml = not getattr(tokenizer, "chat_template", None) and chat_format in ("chatml", "raw")
        if self.chatml:
            pairs = _pairs(history)
            if chat_format == "raw":
                self.text, ids = query, tokenizer.encode(query)
                self.stops = [i for i in [getattr(tokenizer, "eos_token_id", None)] if i is not None]
            else:
                window = int(_setting(model, generation_config, "max_window_size", 6144))
                system = QWEN_SYSTEM if system is None else system
                self.text, ids = chatml_context(tokenizer, query, pairs, system, window)
                self.stops = [_special_id(tokenizer, "<|im_end|>"), _special_id(tokenizer, "<|im_start|>")]
            self.messages = None
            self.input_ids = torch.tensor([ids], device=model.device)
            self.attention_mask = None
            return
        messages, self.pairs = _as_messages(history)
        if system is not None and not (messages and messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": system})
        messages.append({"role": "user", "content": query})
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        self.messages, self.stops = messages, []
        self.input_ids = inputs["input_ids"].to(model.device)
        self.attention_mask = inputs.get("attention_mask")

    def generate_kwargs(self, model, generation_config, kwargs: dict) -> dict:
        kwargs = dict(kwargs)
        kwargs.setdefault("tokenizer", self.tokenizer)
        if generation_config is not None:
            kwargs["generation_config"] = generation_config
        if self.stops and "eos_token_id" not in kwargs:
            eos = _setting(model, generation_config, "eos_token_id")
            eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
            kwargs["eos_token_id"] = [*eos, *(s for s in self.stops if s not in eos)]
        return kwargs

    def reply(self, new_ids: list[int]) -> str:
        if not self.chatml:
            return self.tokenizer.decode(new_ids, skip_special_tokens=True)
        # Qwen-1's decode_tokens: the text up to the first stop token, read off the whole decoded
        # sequence after the prompt's text, stripped (with no stop token its loop drops the last id)
        ids = self.input_ids[0].tolist() + list(new_ids)
        cut = len(self.input_ids[0])
        for cut in range(len(self.input_ids[0]), len(ids)):
            if ids[cut] in self.stops:
                break
        return self.tokenizer.decode(ids[:cut])[len(self.text) :].strip()

    def history(self, history, query: str, response: str) -> list:
        if self.pairs:
            return [*(history or []), (query, response)]
        return [*self.messages, {"role": "assistant", "content": response}]


def _pairs(history: list | None) -> list[tuple[str, str]]:
    messages, pairs = _as_messages(history)
    if pairs or not messages:
        return [tuple(turn) for turn in history or []]
    raise ChatTemplateError(
        "This model's chat format (ChatML without a chat template, Qwen-1) takes history as (query, "
        "response) pairs, as its model.chat returns them."
    )


def chat(
    model,
    tokenizer,
    query: str,
    history: list | None = None,
    system: str | None = None,
    generation_config=None,
    **generate_kwargs,
) -> tuple[str, list]:
    """Answer `query` given the conversation so far.

    The prompt comes from the tokenizer's chat template; a tokenizer without one whose model's
    generation config says `chat_format: "chatml"` (Qwen-1) gets Qwen-1's own ChatML prompt, with its
    default system prompt, `max_window_size` truncation of old turns and its stop tokens.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        query: the user's new message.
        history: earlier turns as message dicts, or as (query, response) pairs; None for a new conversation.
        system: a system prompt, added first unless the history already starts with one.
        generation_config: settings for `generate` (the model's own by default).
        **generate_kwargs: passed to `generate` (max_new_tokens, do_sample, streamer, ...).

    Returns:
        (response, history): the reply text and the history including this turn, in the format given
        (message dicts, or (query, response) pairs).

    Raises:
        ChatTemplateError: no chat template (and no chat format), or malformed history.
    """
    turn = _Turn(model, tokenizer, query, history, system, generation_config)
    kwargs = turn.generate_kwargs(model, generation_config, generate_kwargs)
    out = model.generate(turn.input_ids, attention_mask=turn.attention_mask, **kwargs)
    response = turn.reply(out[0, turn.input_ids.shape[1] :].tolist())
    return response, turn.history(history, query, response)


def chat_stream(
    model,
    tokenizer,
    query: str,
    history: list | None = None,
    system: str | None = None,
    generation_config=None,
    **generate_kwargs,
) -> Iterator[str]:
    """As `chat`, yielding the reply so far after each new token (Qwen-1's `model.chat_stream`)."""
    from .loop import generate_tokens

    turn = _Turn(model, tokenizer, query, history, system, generation_config)
    kwargs = turn.generate_kwargs(model, generation_config, generate_kwargs)
    kwargs.pop("streamer", None)
    new: list[int] = []
    for token in generate_tokens(model, turn.input_ids, turn.attention_mask, **kwargs):
        token = int(token[0])
        if token in turn.stops:
            break
        new.append(token)
        yield tokenizer.decode(new, skip_special_tokens=True)
