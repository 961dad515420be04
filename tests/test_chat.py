"""autolm.chat: multi-turn conversation with history, for any model with a chat template."""

from __future__ import annotations

import pytest
from generation_helpers import write_model

import autolm
from autolm.errors import ChatTemplateError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = write_model(tmp_path_factory.mktemp("chat"), "qwen3")
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    tok = autolm.AutoTokenizer.from_pretrained(directory)
    return model, tok


def expected_reply(model, tok, messages, **kwargs) -> str:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    out = model.generate(ids, **kwargs)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_two_turns_with_system_prompt(setup):
    model, tok = setup
    reply, history = autolm.chat(model, tok, "hello there", system="be brief", max_new_tokens=8)
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    assert reply == expected_reply(model, tok, first, max_new_tokens=8)
    assert history == [*first, {"role": "assistant", "content": reply}]

    reply2, history2 = autolm.chat(
        model, tok, "and then?", history=history, system="be brief", max_new_tokens=8
    )
    second = [*history, {"role": "user", "content": "and then?"}]
    assert reply2 == expected_reply(model, tok, second, max_new_tokens=8)
    assert history2 == [*second, {"role": "assistant", "content": reply2}]
    assert sum(m["role"] == "system" for m in history2) == 1


def test_qwen_style_pair_history(setup):
    model, tok = setup
    reply, history = autolm.chat(model, tok, "hi", history=[("hello", "hey")], max_new_tokens=6)
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "hi"},
    ]
    assert reply == expected_reply(model, tok, messages, max_new_tokens=6)
    assert history == [("hello", "hey"), ("hi", reply)]


def test_bad_history_and_messages(setup):
    model, tok = setup
    with pytest.raises(ChatTemplateError):
        autolm.chat(model, tok, "hi", history=["not a message"])
    with pytest.raises(ChatTemplateError):
        autolm.chat(model, tok, "hi", history=[{"content": "no role"}], max_new_tokens=2)


def test_model_chat_method_and_stream(setup):
    model, tok = setup
    reply, history = autolm.chat(model, tok, "hello there", max_new_tokens=8)
    assert model.chat(tok, "hello there", max_new_tokens=8) == (reply, history)
    again, pairs = model.chat(tok, "and then?", history=[("hello there", reply)], max_new_tokens=8)
    assert pairs == [("hello there", reply), ("and then?", again)]
    parts = list(model.chat_stream(tok, "hello there", max_new_tokens=8))
    assert parts and parts[-1].strip() == reply.strip()
    assert all(b.startswith(a) for a, b in zip(parts, parts[1:]))  # the reply so far, growing


def test_chatml_needs_pair_history_and_its_tokens(setup):
    model, tok = setup
    model.generation_config.chat_format = "chatml"
    template, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ChatTemplateError, match="pairs"):
            model.chat(tok, "hi", history=[{"role": "user", "content": "x"}], max_new_tokens=2)
    finally:
        tok.chat_template = template
        model.generation_config.chat_format = None
