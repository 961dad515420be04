"""Render chat templates: messages -> prompt string, in a jinja2 sandbox.

Chat templates ship inside model repos, so they are untrusted code. They run in jinja2's
`ImmutableSandboxedEnvironment`, and any attempt to reach Python internals raises `TemplateSecurityError`.
This module needs no tokenizer object, so `chat()` helpers and pipelines can call it directly.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ..errors import AutolmError, ChatTemplateError, TemplateSecurityError

logger = logging.getLogger("autolm")

Message = dict[str, Any]
Conversation = list[Message]

# Appended to the final message for `continue_final_message`, then everything from it on is cut away.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


# --- limits -------------------------------------------------------------------------------------
#
# A template is a program from the repo: besides escaping the sandbox it could loop for hours or build
# a string of 10**10 characters. Every loop step, call, filter and output chunk ticks a budget (time and
# size), and the operations that can allocate a lot at once (`*`, `**`, widths, `join`, `replace`,
# `tojson(indent=...)`, `range`) are sized before they run. No signals: the checks sit in the render loop.

MAX_SECONDS = 2.0  # per render
MAX_OUTPUT = 1_000_000  # characters, or 10x the size of the inputs when that is more
MAX_TEMPLATE = 1_000_000  # characters of template source
# jinja's compile time grows with the tags, and faster than linearly with macros (20,000 take a minute);
# real templates have a few hundred tags and a handful of macros
MAX_TAGS = 4_000
MAX_MACROS = 500
_MAX_INDENT = 64
_MAX_RANGE = 100_000  # jinja's own sandbox limit for range()


class _TemplateLimit(Exception):
    """A template went past one of the limits above."""


class _Budget:
    def __init__(self, seconds: float, max_chars: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.max_chars = max_chars

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _TemplateLimit(f"rendering took longer than {self.seconds:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "autolm_template_budget", default=None
)
# (chunks rendered so far, character spans of `{% generation %}` blocks) while masks are asked for
_SPANS: contextvars.ContextVar[tuple[list[str], list] | None] = contextvars.ContextVar(
    "autolm_generation_spans", default=None
)


def _max_chars() -> int:
    budget = _BUDGET.get()
    return budget.max_chars if budget is not None else MAX_OUTPUT


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def _refuse_size(what: str, size: int) -> None:
    if size > _max_chars():
        raise _TemplateLimit(f"{what} would make {size} items, more than the limit of {_max_chars()}")


def _size_of(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


_WIDTH = re.compile(r"(\d{7,})")  # a width or precision of a million or more in a format string


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str):
        for digits in _WIDTH.findall(fmt):
            _refuse_size("a format width", int(digits))


def _check_operation(name: str, args: tuple, kwargs: dict) -> None:
    """Size what a string operation would build, before it builds it."""
    ints = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    strs = [a for a in args if isinstance(a, str)]
    if name in ("center", "ljust", "rjust", "zfill", "batch", "slice", "indent"):
        for n in ints:
            _refuse_size(f"{name}({n})", abs(n))
    if name == "indent":
        width = kwargs.get("width", args[1] if len(args) > 1 else None)
        if isinstance(width, str) and strs:
            _refuse_size("indent", len(width) * (strs[0].count("\n") + 1) + len(strs[0]))
    elif name == "expandtabs" and strs:
        _refuse_size("expandtabs", len(strs[0]) * max(ints or [8]))
    elif name == "replace" and len(strs) >= 3:
        text, old, new = strs[:3]
        _refuse_size("replace", len(text) + (len(text) // max(len(old), 1) + 1) * len(new))
    elif name == "join":
        seq = next((a for a in args if isinstance(a, (list, tuple))), None)
        sep = kwargs.get("d", next((a for a in args if isinstance(a, str)), ""))
        if seq is not None and isinstance(sep, str):
            _refuse_size("join", len(sep) * len(seq) + sum(_size_of(x) for x in seq))
    elif name in ("format", "format_map") and strs:
        _check_format(strs[0])


def _checked_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                _refuse_size(f"{type(seq).__name__} * {n}", len(seq) * max(n, 0))
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if right > 0 and abs(left) > 1 and left.bit_length() * right > 10**5:
            raise _TemplateLimit(f"{left} ** {right} is a number too large to compute")
    elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _refuse_size("concatenation", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


def _checked_iter(iterable: Any) -> Iterable:
    # every loop step ticks the clock: a loop over a long string nested in another calls nothing else
    for item in iterable:
        _tick()
        yield item


def _checked_concat(items: list) -> str:
    # `a ~ b`: sized before it is joined, so doubling a string 40 times fails at the limit, not at 2**40
    parts = [str(item) for item in items]
    _refuse_size("a ~ concatenation", sum(map(len, parts)))
    return "".join(parts)


def _checked_range(*args: Any) -> range:
    _tick()
    values = range(*args)
    if len(values) > _MAX_RANGE:
        raise _TemplateLimit(f"range() of {len(values)} numbers is more than the limit of {_MAX_RANGE}")
    return values


def _tojson(
    value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False
) -> str:
    if isinstance(indent, int) and not isinstance(indent, bool) and not 0 <= indent <= _MAX_INDENT:
        raise _TemplateLimit(f"tojson(indent={indent}) is outside 0..{_MAX_INDENT}")
    if isinstance(indent, str) and len(indent) > _MAX_INDENT:
        raise _TemplateLimit(f"tojson's indent string of {len(indent)} characters is over {_MAX_INDENT}")
    # jinja's own tojson escapes HTML characters (<, >, &), which real templates do not expect
    text = json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    _refuse_size("tojson", len(text))
    return text


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
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    class _Limits(NodeTransformer):
        # Loops and `~` go through checked helpers (registered as filters), so they tick the budget
        def visit_For(self, node):
            self.generic_visit(node)
            node.iter = nodes.Filter(node.iter, "_autolm_iter", [], [], None, None, lineno=node.lineno)
            return node

        def visit_Concat(self, node):
            self.generic_visit(node)
            return nodes.Filter(
                nodes.List(node.nodes, lineno=node.lineno),
                "_autolm_concat",
                [],
                [],
                None,
                None,
                lineno=node.lineno,
            )

    class _Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(("*", "**", "+", "%", "/", "//"))

        # The stock sandbox turns a forbidden attribute into a silent empty Undefined;
        # failing loudly tells the user the template is hostile instead of rendering a wrong prompt.
        def unsafe_undefined(self, obj: Any, attribute: str):
            raise TemplateSecurityError(
                f"The chat template tried to access {attribute!r} on a {type(obj).__name__} object, which the "
                "sandbox forbids (templates may not reach Python internals, files or the OS). Do not use this "
                "template; pass a trusted one with chat_template=..."
            )

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            _tick()
            target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
            if isinstance(getattr(target, "__self__", None), (str, list, tuple)):
                _check_operation(target.__name__, (target.__self__, *args), kwargs)
            for value in (*args, *kwargs.values()):
                if _size_of(value) > _max_chars():
                    raise _TemplateLimit(f"an argument of {_size_of(value)} items is over the limit")
            result = super().call(__context, __obj, *args, **kwargs)
            if _size_of(result) > _max_chars():
                raise _TemplateLimit(f"a call returned {_size_of(result)} items, over the limit")
            return result

        def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
            _tick()
            _checked_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def _generate(self, source, name, filename, defer_init=False):
            return super()._generate(_Limits().visit(source), name, filename, defer_init=defer_init)

    class _Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering ignores it
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            text = caller()
            tracking = _SPANS.get()
            if tracking is not None:  # return_assistant_tokens_mask: where this block lands in the output
                chunks, spans = tracking
                start = sum(map(len, chunks))
                spans.append((start, start + len(text)))
            return text

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

    if len(template) > MAX_TEMPLATE:
        raise ChatTemplateError(
            f"The chat template has {len(template)} characters, more than the {MAX_TEMPLATE} autolm compiles "
            "(real templates have a few thousand). Do not use this template; pass another with chat_template=..."
        )
    tags = template.count("{%") + template.count("{{")
    macros = len(re.findall(r"{%-?\s*macro\b", template))
    if tags > MAX_TAGS or macros > MAX_MACROS:
        raise ChatTemplateError(
            f"The chat template has {tags} tags and {macros} macros, more than autolm compiles ({MAX_TAGS} tags, "
            f"{MAX_MACROS} macros; real templates have a few hundred tags). Do not use this template; pass "
            "another with chat_template=..."
        )
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    for name, function in list(env.filters.items()):
        env.filters[name] = _checked_filter(name, function)
    env.filters["tojson"] = _tojson
    env.filters["_autolm_iter"] = _checked_iter
    env.filters["_autolm_concat"] = _checked_concat
    env.globals["range"] = _checked_range
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
    except AutolmError:
        raise
    except (_TemplateLimit, _RaisedByTemplate) as e:  # raised while folding constants at compile time
        raise ChatTemplateError(f"The chat template cannot be used: {e}.") from None
    except Exception as e:  # nesting too deep for Python's compiler, and the like
        raise ChatTemplateError(
            f"The chat template does not compile ({type(e).__name__}: {str(e)[:200]}). Fix the template or pass "
            "another one with chat_template=..."
        ) from None


def _checked_filter(name: str, function: Callable) -> Callable:
    @functools.wraps(function)  # keeps jinja's pass_context / pass_environment marks
    def checked(*args, **kwargs):
        _tick()
        _check_operation(name, tuple(a for a in args if not _is_jinja_internal(a)), kwargs)
        result = function(*args, **kwargs)
        if _size_of(result) > _max_chars():
            raise _TemplateLimit(f"the {name} filter returned {_size_of(result)} items, over the limit")
        return result

    return checked


def _is_jinja_internal(value: Any) -> bool:
    return type(value).__module__.startswith("jinja2.") and not isinstance(value, str)


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
    template_source: str | None = None,
    generation_spans: list | None = None,
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
        template_source: where the template came from (a file name), for error messages.
        template_kwargs: more template variables (`bos_token`, `enable_thinking`, ...).
        generation_spans: a list that gets, per conversation, the (start, end) character spans of the
            template's `{% generation %}` blocks (for `return_assistant_tokens_mask`).

    Rendering is limited to MAX_SECONDS and to MAX_OUTPUT characters (or 10x the inputs' size).

    Raises:
        ChatTemplateError: malformed messages, a template that does not parse, `raise_exception` in the
            template, any error inside the template, or a template past the time or size limit.
        TemplateSecurityError: the template tried to reach Python internals.
    """

    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt were both set. Use add_generation_prompt to start a "
            "new assistant turn, or continue_final_message to extend the last message, not both."
        )
    batched = is_batched_chat(conversation)
    conversations = list(conversation) if batched else [conversation]
    if tools is not None:
        from .tool_schema import get_json_schema

        tools = [get_json_schema(t) if callable(t) and not isinstance(t, Mapping) else t for t in tools]
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(
                    f"Each tool must be a JSON schema dict; got {type(tool).__name__}. Describe the function as "
                    '{"type": "function", "function": {"name": ..., "parameters": ...}}.'
                )
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise ChatTemplateError("documents must be a list of dicts with 'title' and 'text' keys.")
    source = template_source or "the chat template"
    if not isinstance(chat_template, str):
        raise ChatTemplateError(
            f"{source} is a {type(chat_template).__name__}, not a template string. Fix the chat_template entry.",
            files=[template_source] if template_source else None,
            key="chat_template",
        )
    try:
        compiled = compile_chat_template(chat_template)
    except ChatTemplateError as e:
        e.message = f"{source}: {e.message}"
        e.args = (e.message,)
        e.files = [template_source] if template_source else None
        raise
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
        variables = {"messages": messages, "add_generation_prompt": add_generation_prompt, **shared}
        spans: list | None = [] if generation_spans is not None else None
        text = _render(compiled, variables, source, template_source, spans)
        if generation_spans is not None:
            generation_spans.append(spans)
        if final_text is not None:
            text = _cut_at_tag(text, final_text)
        rendered.append(text)
    return rendered if batched else rendered[0]


def _text_size(value: Any) -> int:
    """Characters of text in plain template inputs (strings, lists and dicts of them)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(k) + _text_size(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_text_size(v) for v in value)
    return 8


def _render(
    compiled, variables: dict, source: str, template_source: str | None, spans: list | None = None
) -> str:
    """Render under the time and size budget; whatever goes wrong inside is a ChatTemplateError."""
    import jinja2

    files = [template_source] if template_source else None
    budget = _Budget(MAX_SECONDS, max(MAX_OUTPUT, 10 * _text_size(variables)))
    token = _BUDGET.set(budget)
    chunks: list[str] = []
    spans_token = _SPANS.set((chunks, spans)) if spans is not None else None
    size = 0
    try:
        for chunk in compiled.generate(**variables):
            size += len(chunk)
            if size > budget.max_chars:
                raise _TemplateLimit(f"the output grew past {budget.max_chars} characters")
            budget.tick()
            chunks.append(chunk)
    except _RaisedByTemplate as e:
        raise ChatTemplateError(f"{source} raised an error: {e}", files=files) from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateSecurityError(
            f"{source} tried an operation the sandbox forbids: {e}. Do not use this template.", files=files
        ) from None
    except ChatTemplateError as e:  # the sandbox's own refusals: say which template it was
        e.message = f"{source}: {e.message}"
        e.args = (e.message,)
        e.files = files
        raise
    except AutolmError:
        raise
    except _TemplateLimit as e:
        raise ChatTemplateError(
            f"{source} went past autolm's limits for a chat template: {e}. Real templates render in "
            "milliseconds; do not use this one, or pass a trusted template with chat_template=...",
            files=files,
        ) from None
    except RecursionError:
        raise ChatTemplateError(
            f"{source} recursed too deeply (a macro calling itself without end). Fix or replace the template.",
            files=files,
        ) from None
    except MemoryError:
        raise ChatTemplateError(
            f"{source} ran out of memory while rendering. Do not use it.", files=files
        ) from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"{source} failed to render: {e}", files=files) from None
    except Exception as e:  # TypeError, ZeroDivisionError, ... raised by the template's own expressions
        raise ChatTemplateError(
            f"{source} failed to render: {type(e).__name__}: {str(e)[:300]}. The template does not handle these "
            "messages; fix the template or the messages.",
            files=files,
        ) from None
    finally:
        _BUDGET.reset(token)
        if spans_token is not None:
            _SPANS.reset(spans_token)
    return "".join(chunks)


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
