"""The HTTP side: FastAPI routes in OpenAI's shapes, over the scheduler in `engine`.

Handlers read the body themselves (size cap, JSON, fields checked by `protocol`), turn it into an
`engine.Request`, and wait on an asyncio queue the scheduler thread feeds. A streamed reply that loses
its client cancels its request, which frees its rows at the next token boundary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, QueueFull, SamplingParams, ShuttingDown
from .engine import Request as Job
from .protocol import (
    APIError,
    bad,
    chat_messages,
    chat_tools,
    embedding_inputs,
    parse_json,
    parse_tool_calls,
    prompt_text,
    sampling_fields,
)

logger = logging.getLogger("autolm.serve")


class Embedder:
    """An encoder model (BERT, MiniLM) as sentence-transformers uses it: mean of the last hidden
    states over real tokens, L2-normalised. One batch at a time."""

    def __init__(self, model, tokenizer, max_context: int):
        self.model, self.tokenizer, self.max_context = model, tokenizer, max_context
        self.lock = asyncio.Lock()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_context, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, hidden)
        mask = batch["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return vectors.tolist(), int(batch["attention_mask"].sum())


class Metrics:
    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}

    def count(self, path: str, status: int) -> None:
        key = (path, status)
        self.requests[key] = self.requests.get(key, 0) + 1


class RequestLog:
    """ASGI middleware: one log line per request (method, path, status, seconds, tokens when known),
    and 413 for a body whose declared length is over the cap."""

    def __init__(self, app, state: dict[str, Any]):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 0
        scope.setdefault("state", {})
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.state["max_body"]:
            error = APIError(
                413,
                f"The body is {int(length)} bytes; this server takes up to {self.state['max_body']}.",
                code="request_too_large",
            )
            response = JSONResponse(error.body(), status_code=413)
            await response(scope, receive, send)
            self._log(scope, 413, start)
            return

        async def logged_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            self._log(scope, status or 500, start)

    def _log(self, scope, status: int, start: float) -> None:
        path = scope.get("path", "")
        self.state["metrics"].count(path, status)
        tokens = scope["state"].get("tokens")
        extra = f" prompt={tokens[0]} completion={tokens[1]}" if tokens else ""
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        logger.info(
            "%s %s %s %d %.3fs%s", who, scope.get("method"), path, status, time.perf_counter() - start, extra
        )


def create_app(
    model,
    tokenizer,
    model_name: str,
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_context: int | None = None,
    max_body: int = 1 << 20,
    aliases: tuple[str, ...] = (),
) -> FastAPI:
    """The server's app for one loaded model: a causal LM (chat and completions) or an encoder
    (embeddings). The scheduler thread starts and stops with the app (its lifespan).

    Args:
        model, tokenizer: loaded with autolm.
        model_name: the id `/v1/models` lists and requests name (`aliases` are accepted too).
        api_key: when set, `/v1/*` needs `Authorization: Bearer <api_key>`.
        max_batch: rows decoded together; max_queue: requests that may wait for a row.
        max_context: the longest prompt + reply (default: the model's max_position_embeddings).
        max_body: the largest request body, in bytes (413 beyond).
    """
    config = model.config
    context = max_context or getattr(config, "max_position_embeddings", None) or 2048
    generative = (
        hasattr(model, "generate") and getattr(model, "get_output_embeddings", lambda: None)() is not None
    )
    engine = Engine(model, tokenizer, max_batch, max_queue, context) if generative else None
    embedder = None if generative else Embedder(model, tokenizer, context)
    names = {model_name, *aliases}
    created = int(time.time())
    state: dict[str, Any] = {"max_body": max_body, "metrics": Metrics(), "engine": engine}

    async def lifespan(app):
        if engine is not None:
            engine.start()
        yield
        if engine is not None:
            engine.stop()

    app = FastAPI(title="autolm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(RequestLog, state=state)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            message = f"No route {request.method} {request.url.path}. See GET /v1/models."
            body = APIError(404, message, code="not_found").body()
        else:
            body = APIError(error.status_code, str(error.detail), code=None).body()
        return JSONResponse(body, status_code=error.status_code)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if given != f"Bearer {api_key}":
            raise APIError(
                401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key"
            )

    async def read_body(request: Request) -> dict[str, Any]:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise APIError(
                    413, f"The body is over {max_body} bytes, this server's limit.", code="request_too_large"
                )
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    def check_model(body: dict[str, Any]) -> None:
        name = body.get("model")
        if name is None:
            raise bad("model", "'model' is required (see GET /v1/models).", code="missing_required_parameter")
        if name not in names:
            raise APIError(
                404,
                f"The model '{name}' does not exist here; this server serves '{model_name}'.",
                param="model",
                code="model_not_found",
            )

    def need_engine(kind: str) -> Engine:
        if engine is None:
            raise APIError(
                400,
                f"'{model_name}' is an encoder model: it serves /v1/embeddings, not {kind}.",
                param="model",
            )
        return engine

    def need_context(prompt: list[int], fields: dict[str, Any]) -> SamplingParams:
        if len(prompt) == 0:
            raise bad("prompt", "The prompt is empty.")
        if len(prompt) >= context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens; the prompt has {len(prompt)}. "
                "Shorten the messages or prompt.",
                param="messages",
                code="context_length_exceeded",
            )
        room = context - len(prompt)
        wanted = fields["max_tokens"]
        return SamplingParams(
            max_tokens=min(wanted, room) if wanted else room,
            **{k: fields[k] for k in ("temperature", "top_p", "seed", "stop")},
            presence_penalty=fields["presence_penalty"],
            frequency_penalty=fields["frequency_penalty"],
            logprobs=fields["logprobs"],
            top_logprobs=fields["top_logprobs"],
        )

    def start_job(prompt: list[int], params: SamplingParams, n: int) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = Job(prompt, params, n, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
        if n > engine.max_batch:
            raise bad("n", f"'n' is {n}; this server decodes at most {engine.max_batch} rows (--max-batch).")
        try:
            engine.submit(job)
        except QueueFull as error:
            raise APIError(
                429, f"The server is busy: {error} Retry later.", type="server_error", code="queue_full"
            ) from None
        except ShuttingDown:
            raise APIError(
                503, "The server is shutting down.", type="server_error", code="shutting_down"
            ) from None
        return job, queue

    async def events(job: Job, queue: asyncio.Queue, request: Request) -> AsyncIterator[tuple]:
        """The job's events until every choice is done; cancels the job when the client leaves."""
        open_choices = job.n
        try:
            while open_choices:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if event[0] in ("done", "error"):
                    open_choices -= 1
                yield event
        finally:
            if open_choices:
                engine.cancel(job)

    # --- routes ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("autolm.serve").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "autolm"}],
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        lines = [
            "# HELP autolm_requests_total HTTP requests by path and status.",
            "# TYPE autolm_requests_total counter",
        ]
        for (path, status), count in sorted(state["metrics"].requests.items()):
            lines.append(f'autolm_requests_total{{path="{path}",status="{status}"}} {count}')
        if engine is not None:
            values = [
                (
                    "prompt_tokens_total",
                    "counter",
                    "Prompt tokens of admitted requests.",
                    engine.prompt_tokens,
                ),
                ("generation_tokens_total", "counter", "Tokens generated.", engine.generated_tokens),
                ("queue_length", "gauge", "Requests waiting for a row.", engine.queue_length),
                ("running_rows", "gauge", "Rows in the running batch.", engine.active),
                (
                    "tokens_per_second",
                    "gauge",
                    "Tokens generated per second, last 10 s.",
                    engine.tokens_per_second(),
                ),
            ]
            for name, kind, help_text, value in values:
                lines += [
                    f"# HELP autolm_{name} {help_text}",
                    f"# TYPE autolm_{name} {kind}",
                    f"autolm_{name} {value}",
                ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_body(request)
        check_model(body)
        need_engine("/v1/chat/completions")
        messages = chat_messages(body)
        tools = chat_tools(body)
        fields = sampling_fields(body, chat=True)
        if not tokenizer.chat_template:
            raise APIError(
                400, f"'{model_name}' has no chat template; use /v1/completions.", param="messages"
            )
        try:
            prompt = tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, return_dict=False
            )
        except (ValueError, TypeError) as error:  # the template rejected the conversation
            raise bad("messages", f"The chat template could not render the messages: {error}") from None
        prompt = [int(t) for t in prompt]
        params = need_context(prompt, fields)
        job, queue = start_job(prompt, params, fields["n"])
        reply = Reply("chat.completion", model_name, job, tools is not None)
        if fields["stream"]:
            stream = reply.chat_stream(events(job, queue, request), fields["include_usage"], request)
            return StreamingResponse(stream, media_type="text/event-stream")
        async for event in events(job, queue, request):
            reply.take(event)
        request.scope["state"]["tokens"] = (len(prompt), job.completion_tokens)
        return reply.chat_whole()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await read_body(request)
        check_model(body)
        need_engine("/v1/completions")
        text = prompt_text(body)
        fields = sampling_fields(body, chat=False)
        if fields["n"] > 1 and body.get("best_of") not in (None, fields["n"]):
            raise bad("best_of", "'best_of' is not supported.")
        if isinstance(text, str):
            prompt = [int(t) for t in tokenizer(text)["input_ids"]]
        else:
            prompt = text
            if max(prompt) >= engine.vocab or min(prompt) < 0:
                raise bad("prompt", f"Token ids must be in [0, {engine.vocab}).")
        params = need_context(prompt, fields)
        job, queue = start_job(prompt, params, fields["n"])
        reply = Reply("text_completion", model_name, job, False)
        if fields["stream"]:
            stream = reply.completion_stream(events(job, queue, request), fields["include_usage"], request)
            return StreamingResponse(stream, media_type="text/event-stream")
        async for event in events(job, queue, request):
            reply.take(event)
        request.scope["state"]["tokens"] = (len(prompt), job.completion_tokens)
        return reply.completion_whole()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        authorize(request)
        body = await read_body(request)
        check_model(body)
        if embedder is None:
            raise APIError(
                400,
                f"'{model_name}' is a generative model; serve an encoder (e.g. MiniLM) for embeddings.",
                param="model",
            )
        texts = embedding_inputs(body)
        async with embedder.lock:
            vectors, tokens = await asyncio.to_thread(embedder.embed, texts)
        request.scope["state"]["tokens"] = (tokens, 0)
        data = []
        for i, vector in enumerate(vectors):
            if body.get("encoding_format") == "base64":
                import base64

                import numpy as np

                vector = base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return {
            "object": "list",
            "data": data,
            "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


class Reply:
    """Builds one request's response from its events: whole, or as server-sent event chunks."""

    def __init__(self, kind: str, model: str, job: Job, tools: bool):
        self.kind, self.model, self.job, self.tools = kind, model, job, tools
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.texts = [""] * job.n
        self.infos: list[list] = [[] for _ in range(job.n)]
        self.reasons: list[str | None] = [None] * job.n
        self.error: str | None = None

    def take(self, event: tuple) -> None:
        if event[0] == "delta":
            _, index, text, infos = event
            self.texts[index] += text
            self.infos[index] += infos
        elif event[0] == "done":
            self.reasons[event[1]] = event[2]
        else:
            self.error = event[2]
            self.reasons[event[1]] = "error"

    def usage(self) -> dict[str, int]:
        prompt, completion = len(self.job.prompt), self.job.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _check(self) -> None:
        if self.error is not None:
            raise APIError(500, self.error, type="server_error", code="generation_failed")

    def chat_logprobs(self, infos: list) -> dict[str, Any] | None:
        if not self.job.params.logprobs:
            return None
        return {
            "content": [
                {
                    "token": info.text,
                    "logprob": info.logprob,
                    "bytes": list(info.text.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in (info.top or [])
                    ],
                }
                for info in infos
            ]
        }

    def completion_logprobs(self, infos: list, offset: int) -> dict[str, Any] | None:
        if not self.job.params.logprobs:
            return None
        offsets = []
        for info in infos:
            offsets.append(offset)
            offset += len(info.text)
        return {
            "tokens": [info.text for info in infos],
            "token_logprobs": [info.logprob for info in infos],
            "top_logprobs": [dict(info.top or []) for info in infos],
            "text_offset": offsets,
        }

    def _message(self, index: int) -> tuple[dict[str, Any], str]:
        text, reason = self.texts[index], self.reasons[index] or "stop"
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.tools:
            content, calls = parse_tool_calls(text)
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
                reason = "tool_calls"
        return message, reason

    def chat_whole(self) -> dict[str, Any]:
        self._check()
        choices = []
        for i in range(self.job.n):
            message, reason = self._message(i)
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": self.chat_logprobs(self.infos[i]),
                    "finish_reason": reason,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def completion_whole(self) -> dict[str, Any]:
        self._check()
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "text": self.texts[i],
                    "logprobs": self.completion_logprobs(self.infos[i], 0),
                    "finish_reason": self.reasons[i] or "stop",
                }
                for i in range(self.job.n)
            ],
            "usage": self.usage(),
        }

    def _sse(self, payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def _chunk(self, choices: list, usage: bool) -> str:
        obj = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        payload = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage:
            payload["usage"] = None
        return self._sse(payload)

    async def chat_stream(self, events: AsyncIterator[tuple], include_usage: bool, request: Request):
        for i in range(self.job.n):
            first = {"role": "assistant", "content": ""}
            yield self._chunk(
                [{"index": i, "delta": first, "logprobs": None, "finish_reason": None}], include_usage
            )
        async for event in events:
            if event[0] == "error":
                yield self._sse(APIError(500, event[2], type="server_error").body())
                continue
            self.take(event)
            if event[0] == "delta":
                _, index, text, infos = event
                if self.tools:  # tool calls are parsed from the whole reply: it comes at the end
                    continue
                if text or (infos and self.job.params.logprobs):
                    choice = {
                        "index": index,
                        "delta": {"content": text},
                        "logprobs": self.chat_logprobs(infos),
                        "finish_reason": None,
                    }
                    yield self._chunk([choice], include_usage)
            else:
                index = event[1]
                message, reason = self._message(index)
                delta: dict[str, Any] = {}
                if self.tools:
                    delta = {"content": message["content"]} if message.get("content") else {}
                    if "tool_calls" in message:
                        delta["tool_calls"] = [
                            dict(call, index=j) for j, call in enumerate(message["tool_calls"])
                        ]
                    if delta:
                        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                        yield self._chunk([choice], include_usage)
                choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
                yield self._chunk([choice], include_usage)
        if include_usage:
            yield self._sse(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
            )
        request.scope["state"]["tokens"] = (len(self.job.prompt), self.job.completion_tokens)
        yield "data: [DONE]\n\n"

    async def completion_stream(self, events: AsyncIterator[tuple], include_usage: bool, request: Request):
        offsets = [0] * self.job.n
        async for event in events:
            if event[0] == "error":
                yield self._sse(APIError(500, event[2], type="server_error").body())
                continue
            self.take(event)
            if event[0] == "delta":
                _, index, text, infos = event
                if text or (infos and self.job.params.logprobs):
                    choice = {
                        "index": index,
                        "text": text,
                        "logprobs": self.completion_logprobs(infos, offsets[index]),
                        "finish_reason": None,
                    }
                    offsets[index] += len(text)
                    yield self._chunk([choice], include_usage)
            else:
                choice = {"index": event[1], "text": "", "logprobs": None, "finish_reason": event[2]}
                yield self._chunk([choice], include_usage)
        if include_usage:
            yield self._sse(
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
            )
        request.scope["state"]["tokens"] = (len(self.job.prompt), self.job.completion_tokens)
        yield "data: [DONE]\n\n"
