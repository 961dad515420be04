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
