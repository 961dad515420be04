"""autolm serve: the OpenAI API driven by the real `openai` client, on 127.0.0.1 and a random port.

The server runs in a background thread of the test process (uvicorn), over a tiny random Llama and a
small ChatML tokenizer; greedy replies are compared with `model.generate` on the same prompt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from generation_helpers import write_model

import autolm

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from autolm.serve import create_app  # noqa: E402
from autolm.serve.protocol import parse_tool_calls  # noqa: E402

KEY = "test-key"
TIMEOUT = 120  # seconds for any one reply: the machine may be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """Serve `app` on 127.0.0.1 in a background thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = write_model(tmp_path_factory.mktemp("serve") / "tiny", "llama", max_position_embeddings=4096)
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    tok = autolm.AutoTokenizer.from_pretrained(directory)
    return directory, model, tok


@pytest.fixture(scope="module")
def server(tiny):
    _, model, tok = tiny
    app = create_app(model, tok, "tiny", api_key=KEY, max_body=64 * 1024, max_context=256)
    with running(app) as url:
        yield url, app


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, timeout=TIMEOUT, max_retries=0)


def prompt_ids(tok, messages, **kwargs) -> torch.Tensor:
    return tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", **kwargs)[
        "input_ids"
    ]


def generated(model, tok, ids: torch.Tensor, max_new_tokens: int) -> tuple[str, int]:
    """(text, number of new tokens) of greedy `generate`."""
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids.shape[1] :]
    return tok.decode(new, skip_special_tokens=True), len(new)


def streamed(client, **kwargs) -> tuple[str, list, object]:
    """(text, finish reasons, usage) of a streamed chat reply."""
    text, reasons, usage = "", [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return text, reasons, usage


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def test_chat_whole_and_streamed_equal_generate(tiny, client):
    _, model, tok = tiny
    ids = prompt_ids(tok, MESSAGES)
    want, count = generated(model, tok, ids, 20)
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, temperature=0)
    assert whole.choices[0].message.content == want
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == ids.shape[1]
    assert whole.usage.completion_tokens == count
    assert whole.usage.total_tokens == ids.shape[1] + count
    text, reasons, usage = streamed(
        client,
        model="tiny",
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,
        stream_options={"include_usage": True},
    )
    assert text == want
    assert reasons == [whole.choices[0].finish_reason]
    assert (usage.prompt_tokens, usage.completion_tokens) == (ids.shape[1], count)


def test_content_parts_and_developer_role(tiny, client):
    _, model, tok = tiny
    parts = [
        {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
    ]
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=8, temperature=0)
    b = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_completions_equal_generate(tiny, client):
    _, model, tok = tiny
    ids = tok("the quick brown fox", return_tensors="pt")["input_ids"]
    want, count = generated(model, tok, ids, 16)
    whole = client.completions.create(
        model="tiny", prompt="the quick brown fox", max_tokens=16, temperature=0
    )
    assert whole.choices[0].text == want
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (ids.shape[1], count)
    chunks = client.completions.create(
        model="tiny", prompt="the quick brown fox", max_tokens=16, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want


def test_seed_reproduces_sampled_replies(client):
    def sample(seed):
        reply = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.9, seed=seed
        )
        return reply.choices[0].message.content

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_stop_strings(tiny, client):
    _, model, tok = tiny
    full = client.completions.create(model="tiny", prompt="hello world", max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"the tiny model's reply {text!r} leaves no stop string to test"
    want = text[: text.index(stop)]
    for stops in (stop, [stop, "never appears"]):
        reply = client.completions.create(
            model="tiny", prompt="hello world", max_tokens=24, temperature=0, stop=stops
        )
        assert reply.choices[0].text == want
        assert reply.choices[0].finish_reason == "stop"
        chunks = client.completions.create(
            model="tiny", prompt="hello world", max_tokens=24, temperature=0, stop=stops, stream=True
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want


def test_n_choices_and_logprobs(tiny, client):
    _, model, tok = tiny
    ids = prompt_ids(tok, MESSAGES)
    want, count = generated(model, tok, ids, 10)
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, n=3, logprobs=True, top_logprobs=3
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == want for c in reply.choices)
    assert reply.usage.completion_tokens == 3 * count
    content = reply.choices[0].logprobs.content
    assert len(content) == count
    with torch.no_grad():
        first = model(ids).logits[0, -1].float().log_softmax(-1)
    assert content[0].logprob == pytest.approx(float(first.max()), abs=1e-4)
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-6)  # greedy: the top one
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    sampled = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=1.0, n=2, seed=3
    )
    assert len(sampled.choices) == 2


def test_penalties_change_greedy_reply(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    penalised = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        frequency_penalty=2.0,
        presence_penalty=2.0,
    )
    assert penalised.choices[0].message.content != plain.choices[0].message.content


PROMPTS = [
    "hello there",
    "the quick brown fox",
    "once upon a time",
    "你好，世界",
    "how are you today?",
    "stop here.",
    "emoji 🙂 and 🚀",
    "a small model",
]


def test_eight_concurrent_clients_equal_alone(client):
    def ask(text: str) -> str:
        messages = [{"role": "user", "content": text}]
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length")
        return reply.choices[0].message.content

    alone = [ask(p) for p in PROMPTS]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = ask(PROMPTS[i])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not errors
    assert [results[i] for i in range(len(PROMPTS))] == alone


def _post(url: str, path: str, body, headers=None, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=headers, timeout=TIMEOUT)


@pytest.mark.parametrize(
    "path, body, raw, headers, status, param",
    [
        ("/v1/chat/completions", None, b"{not json", None, 400, None),
        ("/v1/chat/completions", [1, 2], None, None, 400, None),
        ("/v1/chat/completions", {"model": "tiny"}, None, None, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, None, None, 400, "model"),
        ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, None, None, 400, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "x", "content": "h"}]}, None, None, 400,
         "messages[0].role"),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": "5"}, None, None, 400,
         "max_tokens"),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "temperature": 9}, None, None, 400,
         "temperature"),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "stop": [1]}, None, None, 400, "stop"),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "n": 0}, None, None, 400, "n"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "fox " * 400}]},
         None, None, 400, "messages"),
        ("/v1/completions", {"model": "tiny"}, None, None, 400, "prompt"),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "response_format": {"type": "json_object"}},
         None, None, 400, "response_format"),
        ("/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES}, None, None, 404, "model"),
        ("/v1/nothing", {}, None, None, 404, None),
        ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES}, None, {"Authorization": "Bearer no"},
         401, None),
        ("/v1/chat/completions", None, b"{" + b" " * (65 * 1024) + b"}", None, 413, None),
        ("/v1/embeddings", {"model": "tiny", "input": "hi"}, None, None, 400, "model"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(server, client, path, body, raw, headers, status, param):
    url, _ = server
    response = _post(url, path, body, headers, raw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    # the server keeps answering
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, temperature=0)
    assert reply.choices[0].message.content is not None


def test_context_error_is_openai_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "fox " * 400}], max_tokens=2
        )
    assert info.value.code == "context_length_exceeded"


def test_models_health_metrics_and_page(server, client):
    url, _ = server
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(url + "/health", timeout=TIMEOUT).json()["status"] == "ok"
    client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, temperature=0)
    metrics = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    for name in ("autolm_requests_total", "autolm_generation_tokens_total", "autolm_queue_length"):
        assert name in metrics
    assert 'path="/v1/chat/completions",status="200"' in metrics
    page = httpx.get(url + "/", timeout=TIMEOUT)
    assert (
        page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<script>")[1]
    )


def test_client_dropping_mid_stream_frees_its_slot(tiny):
    """With one row, a stream that its client closes must not hold the row until its max_tokens."""
    _, model, tok = tiny
    app = create_app(model, tok, "tiny", max_batch=1, max_context=4096)
    engine = app.state.engine
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        stream = client.completions.create(
            model="tiny", prompt="hello", max_tokens=4000, temperature=1.0, seed=1, stream=True
        )
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        deadline = time.monotonic() + TIMEOUT
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == 0
        assert engine.generated_tokens < 4000  # it stopped early
        reply = client.completions.create(model="tiny", prompt="hello", max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens >= 1


def test_queue_full_is_429(tiny):
    """One row and a queue of one: a third request while two are in is refused with 429."""
    _, model, tok = tiny
    app = create_app(model, tok, "tiny", max_batch=1, max_queue=1, max_context=4096)
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        running_one = client.completions.create(
            model="tiny", prompt="hi", max_tokens=3000, stream=True, seed=0
        )
        next(iter(running_one))  # the one row is taken
        waiting = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, stream=True)
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert info.value.code == "queue_full"
        running_one.close()
        assert "".join(c.choices[0].delta.content or "" for c in waiting if c.choices) is not None


QWEN_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{%- endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    'For each function call, return <tool_call>{"name": <function-name>, "arguments": <args-json-object>}'
    "</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{%- elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for call in m.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def test_tools_round_trip_on_a_qwen_template(tiny):
    directory, model, _ = tiny
    tok = autolm.AutoTokenizer.from_pretrained(directory)
    tok.chat_template = QWEN_TEMPLATE
    app = create_app(model, tok, "tiny", max_context=4096)
    question = [{"role": "user", "content": "weather in Paris?"}]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    turns = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        first = client.chat.completions.create(
            model="tiny", messages=question, tools=TOOLS, max_tokens=4, temperature=0
        )
        assert first.usage.prompt_tokens == prompt_ids(tok, question, tools=TOOLS).shape[1]
        template_turns = [
            *question,
            {"role": "assistant", "content": "", "tool_calls": [dict(call, function={"name": "get_weather",
                                                                                     "arguments": {"city": "Paris"}})]},
            turns[2],
        ]  # fmt: skip
        rendered = tok.apply_chat_template(
            template_turns, tools=TOOLS, add_generation_prompt=True, tokenize=False
        )
        assert '"arguments": {"city": "Paris"}' in rendered and "<tool_response>" in rendered
        second = client.chat.completions.create(
            model="tiny", messages=turns, tools=TOOLS, max_tokens=4, temperature=0
        )
        assert second.usage.prompt_tokens == prompt_ids(tok, template_turns, tools=TOOLS).shape[1]

    # a reply in the Hermes format comes back as OpenAI tool calls
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_tool_calls("no call here") == ("no call here", [])


def test_tool_call_reply_reaches_the_client_as_tool_calls(tiny, monkeypatch):
    """The model's text in the Hermes format (forced here: a random model does not write it) is
    parsed into `tool_calls`, whole and streamed."""
    from autolm.serve import engine as engine_module

    directory, model, _ = tiny
    tok = autolm.AutoTokenizer.from_pretrained(directory)
    tok.chat_template = QWEN_TEMPLATE
    script = tok('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')[
        "input_ids"
    ]

    def scripted(self, rows, logits):
        return [script[len(seq.tokens)] if len(seq.tokens) < len(script) else 2 for seq in rows]

    def choose(self, rows, logits):
        tokens = scripted(self, rows, logits)
        for seq, token in zip(rows, tokens):
            seq.pending_info = engine_module.TokenInfo(token, tok.decode([token]))
        return tokens

    monkeypatch.setattr(engine_module.Engine, "_choose", choose)
    app = create_app(model, tok, "tiny", max_context=4096)
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        messages = [{"role": "user", "content": "weather in Paris?"}]
        reply = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=400)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].function.name == "get_weather"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
        calls, reasons = [], []
        for chunk in client.chat.completions.create(
            model="tiny", messages=messages, tools=TOOLS, max_tokens=400, stream=True
        ):
            for c in chunk.choices:
                calls += c.delta.tool_calls or []
                reasons += [c.finish_reason] if c.finish_reason else []
        assert [c.function.name for c in calls] == ["get_weather"] and reasons == ["tool_calls"]


def test_embeddings_equal_sentence_transformers():
    from bert_helpers import minilm_dir

    sentence_transformers = pytest.importorskip("sentence_transformers")
    from autolm.serve import load_for_serving

    path = minilm_dir()
    model, tok = load_for_serving(str(path))
    texts = ["A man is eating food.", "The weather is lovely today, isn't it?"]
    want = sentence_transformers.SentenceTransformer(str(path), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    with running(create_app(model, tok, "minilm")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        out = client.embeddings.create(model="minilm", input=texts)
        got = torch.tensor([d.embedding for d in out.data])
        assert torch.allclose(got, torch.tensor(want), atol=1e-4)
        assert out.usage.prompt_tokens == sum(len(tok(t)["input_ids"]) for t in texts)
        one = client.embeddings.create(model="minilm", input=texts[0])
        assert torch.allclose(torch.tensor(one.data[0].embedding), got[0], atol=1e-5)
        response = httpx.post(
            url + "/v1/chat/completions", json={"model": "minilm", "messages": MESSAGES}, timeout=TIMEOUT
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "model"


def test_cli_serves_and_sigterm_ends_cleanly(tiny, tmp_path):
    """`autolm serve DIR` in its own process: a streamed reply in flight when SIGTERM arrives still
    ends with `data: [DONE]`, and the process exits 0."""
    directory, _, _ = tiny
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "server.log", "w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autolm",
            "serve",
            str(directory),
            "--port",
            str(port),
            "--max-context",
            "4096",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        body = {"model": Path(directory).name, "prompt": "hello", "max_tokens": 4000, "stream": True}
        lines = []
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 6:
                    process.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]"
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "POST /v1/completions 200" in text  # the request log line
