"""`chat(model, tokenizer, query, history)`: one turn of a multi-turn conversation, for any chat template.

(`autolm.chat` is the function; this module is `autolm.generation.chat`.)

The Qwen-7B-Chat `model.chat` pattern as a plain function: it returns the reply and the history to pass
to the next turn.
"""

from __future__ import annotations

from typing import Any

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


def chat(
    model,
    tokenizer,
    query: str,
    history: list | None = None,
    system: str | None = None,
    **generate_kwargs,
) -> tuple[str, list]:
    """Answer `query` given the conversation so far.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer, with a chat template.
        query: the user's new message.
        history: earlier turns as message dicts, or as (query, response) pairs; None for a new conversation.
        system: a system prompt, added first unless the history already starts with one.
        **generate_kwargs: passed to `generate` (max_new_tokens, do_sample, streamer, ...).

    Returns:
        (response, history): the reply text and the history including this turn, in the format given
        (message dicts, or (query, response) pairs).

    Raises:
        ChatTemplateError: no chat template, or malformed history.
    """
    messages, pairs = _as_messages(history)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    messages.append({"role": "user", "content": query})
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    input_ids = inputs["input_ids"].to(model.device)
    generate_kwargs.setdefault("tokenizer", tokenizer)
    out = model.generate(input_ids, attention_mask=inputs.get("attention_mask"), **generate_kwargs)
    response = tokenizer.decode(out[0, input_ids.shape[1] :].tolist(), skip_special_tokens=True)
    if pairs:
        return response, [*(history or []), (query, response)]
    return response, [*messages, {"role": "assistant", "content": response}]
