"""Python functions as tool JSON schemas for chat templates, as transformers' `get_json_schema` builds
them: the name, the Google-style docstring's summary and `Args:` descriptions, the type hints."""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from ..errors import ChatTemplateError

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_PLAIN = {**{t: {"type": name} for t, name in _SCALARS.items()}, list: {"type": "array"},
          tuple: {"type": "array"}, dict: {"type": "object"}}  # fmt: skip
_SECTION = r"(?:Args:|Returns:|Raises:|\Z)"
_DESCRIPTION = re.compile(rf"^(.*?)[\n\s]*{_SECTION}", re.DOTALL)
_ARGS = re.compile(r"\n\s*Args:\n(.*?)[\n\s]*(?:Returns:|Raises:|\Z)", re.DOTALL)
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(?:Raises:|\Z)", re.DOTALL)
# "name:" or "name (type):" at an indentation, then its text up to the next such line no deeper
_ARG = re.compile(
    r"(?:^|\n)([ \t]*)(\w+)(?:[ \t]*\([^()\n]*\))?:\s*(.*?)\s*(?=\n(?!\1[ \t])[ \t]*\w+(?:[ \t]*\([^()\n]*\))?:|\Z)",
    re.DOTALL,
)
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


class ToolSchemaError(ChatTemplateError):
    """A function that cannot be described as a tool (no docstring, an argument without a type hint or
    a description, a type with no JSON equivalent)."""


def _enum_schema(values: list) -> dict:
    kinds = list(dict.fromkeys(_SCALARS[type(v)] for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def _hint_schema(hint: Any, where: str) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None and isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        if not values or any(type(v) not in _SCALARS for v in values):
            raise ToolSchemaError(
                f"{where}: the Enum {hint.__name__} needs members with int/float/str/bool values."
            )
        return _enum_schema(values)
    if origin is None:
        if hint is Any:
            return {}
        if hint in _PLAIN:
            return dict(_PLAIN[hint])
        raise ToolSchemaError(
            f"{where}: the type hint {hint!r} has no JSON schema (use int, float, str, bool, Enum, Literal, "
            "list, tuple, dict or unions of them), or pass a hand-written schema dict instead of the function."
        )
    if origin is typing.Union or origin is types.UnionType:
        subs = [_hint_schema(t, where) for t in args if t is not type(None)]
        if len(subs) == 1:
            out = subs[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subs):
            names = sorted({s["type"] for s in subs})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": subs}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is typing.Literal and args:
        if any(type(a) not in _SCALARS for a in args):
            raise ToolSchemaError(f"{where}: Literal values must be int, float, str, bool or None.")
        return _enum_schema(list(args))
    if origin is list:
        return {"type": "array", "items": _hint_schema(args[0], where)} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise ToolSchemaError(f"{where}: use list[...] for a variable-length or one-element tuple.")
        return {"type": "array", "prefixItems": [_hint_schema(t, where) for t in args]}
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = _hint_schema(args[1], where)
        return out
    raise ToolSchemaError(f"{where}: cannot describe the type hint {hint!r} as JSON.")


def _parse_docstring(doc: str) -> tuple[str | None, dict[str, str], str | None]:
    summary = _DESCRIPTION.search(doc)
    args = _ARGS.search(doc)
    returns = _RETURNS.search(doc)
    described: dict[str, str] = {}
    if args:
        block = "\n".join(line for line in args.group(1).split("\n") if line.strip())
        described = {m[1]: re.sub(r"\s*\n+\s*", " ", m[2].strip()) for m in _ARG.findall(block)}
    return (
        summary.group(1).strip() if summary else None,
        described,
        returns.group(1).strip() if returns else None,
    )


def get_json_schema(func: Callable) -> dict:
    """{"type": "function", "function": {"name", "description", "parameters", ["return"]}} for `func`.

    Raises:
        ToolSchemaError: no docstring, an argument without a type hint or a docstring description, or a
            type hint with no JSON equivalent.
    """
    name = getattr(func, "__name__", "operation")
    doc = inspect.getdoc(func)
    if not doc:
        raise ToolSchemaError(
            f"Cannot describe the tool {name}: it has no docstring (Google style, with Args:)."
        )
    summary, described, returns = _parse_docstring(doc.strip())
    hints = typing.get_type_hints(func)
    params = inspect.signature(func).parameters
    first = next(iter(params), None)
    implicit = (
        first if first in ("self", "cls") and params[first].annotation is inspect.Parameter.empty else None
    )
    required = []
    for pname, param in params.items():
        if pname == implicit:
            continue
        if param.annotation is inspect.Parameter.empty:
            raise ToolSchemaError(f"Cannot describe the tool {name}: argument {pname} has no type hint.")
        if param.default is inspect.Parameter.empty:
            required.append(pname)
    properties: dict[str, dict] = {}
    return_schema = None
    for pname, hint in hints.items():
        if pname == implicit:
            continue
        if pname == "return":
            try:
                return_schema = _hint_schema(hint, f"{name}'s return type")
            except ToolSchemaError:
                pass
            continue
        properties[pname] = _hint_schema(hint, f"{name}'s argument {pname}")
    for pname, schema in properties.items():
        if pname not in described:
            raise ToolSchemaError(
                f"Cannot describe the tool {name}: its docstring's Args: section has no description of {pname!r}."
            )
        text = described[pname]
        choices = _CHOICES.search(text)
        if choices:
            schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            text = text[: choices.start()].strip()
        schema["description"] = text
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    out: dict[str, Any] = {"name": name, "description": summary, "parameters": parameters}
    if return_schema is not None:
        if returns is not None:
            return_schema["description"] = returns
        out["return"] = return_schema
    return {"type": "function", "function": out}
