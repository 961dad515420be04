"""Render chat templates: messages -> prompt string, in a jinja2 sandbox.

Chat templates ship inside model repos, so they are untrusted code. They run in jinja2's
`ImmutableSandboxedEnvironment`, and any attempt to reach Python internals raises `TemplateSecurityError`.
This module needs no tokenizer object, so `chat()` helpers and pipelines can call it directly.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ..errors import ChatTemplateError, TemplateSecurityError

logger = logging.getLogger("autolm")

Message = dict[str, Any]
Conversation = list[Message]

# Appended to the final message for `continue_final_message`, then everything from it on is cut away.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False
) -> str:
    # jinja's own tojson escapes HTML characters (<, >, &), which real templates do not expect
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _RaisedByTemplate(Exception):
    """Carries a `raise_exception(...)` message out of jinja untouched."""


def _raise_exception(message: str):
    raise _RaisedByTemplate(message)


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str):
    """Compile a template once; the same template string is reused across calls."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Sandbox(ImmutableSandboxedEnvironment):
        # The stock sandbox turns a forbidden attribute into a silent empty Undefined;
        # failing loudly tells the user the template is hostile instead of rendering a wrong prompt.
        def unsafe_undefined(self, obj: Any, attribute: str):
            raise TemplateSecurityError(
                f"The chat template tried to access {attribute!r} on a {type(obj).__name__} object, which the "
                "sandbox forbids (templates may not reach Python internals, files or the OS). Do not use this "
                "template; pass a trusted one with chat_template=..."
            )

    class _Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering ignores it
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    class _Namespace(jinja2.utils.Namespace):
        # Underscore names on a namespace could shadow its internals
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise TemplateSecurityError(
                    f"The chat template tried to store {name!r} on a namespace; underscore names are forbidden."
                )

    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    env.globals["dict"] = lambda *args, **kwargs: dict(*args, **kwargs)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"The chat template does not parse: {e.message} (line {e.lineno}). Fix the template or pass another "
            "one with chat_template=..."
        ) from e


def _plain(value: Any) -> Any:
    """Rebuild template inputs out of plain JSON types, so objects with risky methods never reach the sandbox."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if callable(getattr(value, "model_dump", None)):  # pydantic messages (OpenAI SDK)
        return _plain(value.model_dump())
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _validate(conversation: Any, index: int | None) -> Conversation:
    where = "" if index is None else f" of conversation {index}"
    if not isinstance(conversation, (list, tuple)):
        raise ChatTemplateError(
            f"Expected a conversation{where} as a list of message dicts, got {type(conversation).__name__}."
        )
    messages = []
    for i, message in enumerate(conversation):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(
                f"Message {i}{where} is a {type(message).__name__}, not a dict. Each message must be a dict like "
                '{"role": "user", "content": "..."}.'
            )
        # APIs return content=None / tool_calls=None; templates handle a missing key better than a None
        message = {k: v for k, v in message.items() if v is not None}
        missing = [k for k in ("role",) if k not in message]
        if "content" not in message and "tool_calls" not in message:
            missing.append("content")
        if missing:
            raise ChatTemplateError(
                f"Message {i}{where} has no {' or '.join(repr(m) for m in missing)} key (found keys: "
                f"{sorted(message) or 'none'}). Each message needs a 'role' and a 'content' (or 'tool_calls')."
            )
        # Older names for a message's reasoning: templates read `reasoning_content` (gpt-oss reads `thinking`)
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        messages.append(message)
    return messages


def is_batched_chat(conversation: Any) -> bool:
    """True when `conversation` is a list of conversations rather than one list of messages."""
    return (
        isinstance(conversation, (list, tuple))
        and len(conversation) > 0
        and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
    )


def render_chat_template(
    conversation: Conversation | list[Conversation],
    chat_template: str,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    tools: list[dict | Callable] | None = None,
    documents: list[dict] | None = None,
    **template_kwargs: Any,
) -> str | list[str]:
    """Render one conversation (-> str) or a batch of them (-> list[str]) with a chat template.

    Args:
        conversation: a list of `{"role": ..., "content": ...}` dicts, or a list of such lists.
        chat_template: the jinja template source.
        add_generation_prompt: ask the template to open an assistant turn.
        continue_final_message: leave the last message open so the model continues it (a field name may be given).
        tools: JSON schemas of tools, passed to the template as `tools`.
        documents: RAG documents (dicts), passed as `documents`.
        template_kwargs: more template variables (`bos_token`, `enable_thinking`, ...).

    Raises:
        ChatTemplateError: malformed messages, a template that does not parse, or `raise_exception` in the template.
        TemplateSecurityError: the template tried to reach Python internals.
    """
    import jinja2

    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt were both set. Use add_generation_prompt to start a "
            "new assistant turn, or continue_final_message to extend the last message, not both."
        )
    batched = is_batched_chat(conversation)
    conversations = list(conversation) if batched else [conversation]
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(
                    f"Each tool must be a JSON schema dict; got {type(tool).__name__}. Describe the function as "
                    '{"type": "function", "function": {"name": ..., "parameters": ...}}.'
                )
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise ChatTemplateError("documents must be a list of dicts with 'title' and 'text' keys.")
    compiled = compile_chat_template(chat_template)
    shared = {"tools": _plain(tools), "documents": _plain(documents), **_plain(template_kwargs)}

    rendered = []
    for index, conv in enumerate(conversations):
        conv = getattr(conv, "messages", conv)
        messages = _plain(_validate(conv, index if batched else None))
        final_text = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            if not messages or not isinstance(messages[-1].get(field), (str, list)):
                raise ChatTemplateError(
                    f"continue_final_message is set but the final message has no {field!r} text to continue."
                )
            final_text, messages[-1][field] = _tag_final(messages[-1][field])
        try:
            text = compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **shared)
        except _RaisedByTemplate as e:
            raise ChatTemplateError(f"The chat template raised an error: {e}") from None
        except jinja2.exceptions.SecurityError as e:
            raise TemplateSecurityError(
                f"The chat template tried an operation the sandbox forbids: {e}. Do not use this template."
            ) from None
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"The chat template failed to render: {e}") from e
        if final_text is not None:
            text = _cut_at_tag(text, final_text)
        rendered.append(text)
    return rendered if batched else rendered[0]


def _tag_final(content: str | list) -> tuple[str, str | list]:
    """Mark the end of the final message so the rendered text can be cut right after it."""
    if isinstance(content, str):
        return content, content + _CONTINUE_TAG
    for block in reversed(content):  # multimodal content: continue the last text block
        if isinstance(block, dict) and "text" in block:
            text = block["text"]
            block["text"] = text + _CONTINUE_TAG
            return text, content
    raise ChatTemplateError(
        "continue_final_message is set but the final message has no text block to continue."
    )


def _cut_at_tag(text: str, final_text: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if tag not in text or final_text.strip() not in text:
        raise ChatTemplateError(
            "continue_final_message is set but the final message does not appear in the rendered chat; the "
            "template drops or rewrites it. Check that the template renders the last message's content verbatim."
        )
    at = text.rindex(tag)
    if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return text[:at]
    # The template trimmed the trailing space of the message, so the message's own trailing space is gone too
    return text[:at].rstrip()
