"""OpenAI's request fields, checked, and its error bodies and tool-call format.

Requests are plain JSON objects read by hand rather than through pydantic models, so each bad field
gets OpenAI's 400 body naming that field (`param`) instead of a validation dump.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(
            400, f"The body is not valid JSON ({error}). Send a JSON object.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, "The body must be a JSON object.", code="invalid_json")
    return body


def _typed(body: dict, name: str, types: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; OpenAI's numbers are never booleans
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise bad(name, f"'{name}' must be {what}, got {json.dumps(value)[:80]}.", code="invalid_type")
    return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = float(_typed(body, name, (int, float), "a number", default))
    if not low <= value <= high:
        raise bad(name, f"'{name}' must be between {low} and {high}, got {value}.")
    return value


def sampling_fields(body: dict, chat: bool) -> dict[str, Any]:
    """The generation settings every text endpoint shares, checked: a dict for `SamplingParams`
    (without max_tokens), plus "n", "max_tokens" (None: up to the context) and "stream"."""
    max_tokens = _typed(body, "max_tokens", (int,), "an integer")
    if chat:
        max_tokens = _typed(body, "max_completion_tokens", (int,), "an integer", max_tokens)
    if max_tokens is not None and max_tokens < 1:
        raise bad("max_tokens", f"'max_tokens' must be at least 1, got {max_tokens}.")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad("stop", "'stop' must be a string or a list of strings.", code="invalid_type")
    if len(stop) > 4 or any(not s for s in stop):
        raise bad("stop", "'stop' takes up to 4 non-empty strings.")
    n = _typed(body, "n", (int,), "an integer", 1)
    if not 1 <= n <= 128:
        raise bad("n", f"'n' must be between 1 and 128, got {n}.")
    if chat:
        logprobs = bool(_typed(body, "logprobs", (bool,), "a boolean", False))
        top = _typed(body, "top_logprobs", (int,), "an integer", 0)
        if top and not logprobs:
            raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true.")
    else:  # the legacy endpoint: logprobs is the number of alternatives
        top = _typed(body, "logprobs", (int,), "an integer", None)
        logprobs = top is not None
        top = top or 0
    if not 0 <= top <= 20:
        raise bad("top_logprobs", f"'top_logprobs' must be between 0 and 20, got {top}.")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object.", code="invalid_type")
    seed = _typed(body, "seed", (int,), "an integer")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type", "text") != "text"
    ):
        # constrained decoding (json_object, json_schema) is not implemented; saying so beats ignoring it
        raise bad("response_format", "Only 'response_format': {'type': 'text'} is supported by this server.")
    return {
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0) or 1e-9,
        "seed": seed,
        "stop": stop,
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "logprobs": logprobs,
        "top_logprobs": top,
        "n": n,
        "max_tokens": max_tokens,
        "stream": bool(_typed(body, "stream", (bool,), "a boolean", False)),
        "include_usage": bool((options or {}).get("include_usage", False)),
    }


ROLES = ("system", "developer", "user", "assistant", "tool")


def chat_messages(body: dict) -> list[dict[str, Any]]:
    """`messages` as the chat template takes them: text parts joined, tool-call arguments as objects."""
    messages = body.get("messages")
    if messages is None:
        raise bad("messages", "'messages' is required.", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty list.", code="invalid_type")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, f"'{where}' must be an object.", code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}.")
        entry: dict[str, Any] = {"role": "system" if role == "developer" else role}
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise bad(
                        f"{where}.content[{j}]",
                        f"'{where}.content[{j}]' must be a text part {{'type': 'text', 'text': ...}}; "
                        "this server handles text only.",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        elif content is None:
            if role != "assistant" or not message.get("tool_calls"):
                raise bad(f"{where}.content", f"'{where}.content' is required.", "missing_required_parameter")
            content = ""
        elif not isinstance(content, str):
            raise bad(f"{where}.content", f"'{where}.content' must be a string or a list of text parts.")
        entry["content"] = content
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = [
                _template_tool_call(call, f"{where}.tool_calls") for call in message["tool_calls"]
            ]
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                entry[key] = message[key]
        out.append(entry)
    return out


def _template_tool_call(call: Any, where: str) -> dict[str, Any]:
    """A tool call of an assistant message, with its arguments as an object (templates dump them)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad(where, f"each of '{where}' needs a 'function' with a 'name'.")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise bad(where, f"the arguments of '{function['name']}' in '{where}' are not JSON.") from None
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def chat_tools(body: dict) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in tools
    ):
        raise bad("tools", "'tools' must be a list of {'type': 'function', 'function': {'name': ...}}.")
    return tools or None


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Split a reply in the Qwen/Hermes format into its text and tool calls: each
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` becomes an OpenAI tool call (arguments
    as a JSON string). A block that is not such JSON stays in the text."""
    calls = []
    for match in _TOOL_CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        arguments = data.get("arguments", data.get("parameters", {}))
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": data["name"],
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
        )
    if not calls:
        return text, []
    head = text[: text.find("<tool_call>")].strip()
    return head or None, calls


def prompt_text(body: dict) -> str | list[int]:
    """The legacy endpoint's `prompt`: a string, or a list of token ids (a list of one string is fine)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("prompt", "'prompt' is required.", code="missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt
    raise bad("prompt", "'prompt' must be a string or a list of token ids (one prompt per request).")


def embedding_inputs(body: dict) -> list[str]:
    texts = body.get("input")
    if texts is None:
        raise bad("input", "'input' is required.", code="missing_required_parameter")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad("input", "'input' must be a string or a non-empty list of strings.", code="invalid_type")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise bad("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
    return texts
