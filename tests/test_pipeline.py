"""pipeline("text-generation") gives the same text as transformers' pipeline for greedy decoding."""

from __future__ import annotations

import pytest
from generation_helpers import write_model

import autolm
from autolm.errors import GenerationError

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    import transformers

    directory = write_model(tmp_path_factory.mktemp("pipe"), "qwen2")
    ours = autolm.pipeline("text-generation", model=str(directory), dtype="float32")
    ref = transformers.pipeline("text-generation", model=str(directory), dtype="float32")
    return ours, ref


SETTINGS = dict(max_new_tokens=12, do_sample=False)


@pytest.mark.parametrize("return_full_text", [True, False])
def test_string_input_matches_transformers(pipes, return_full_text):
    ours, ref = pipes
    a = ours("the quick brown fox", return_full_text=return_full_text, **SETTINGS)
    b = ref("the quick brown fox", return_full_text=return_full_text, **SETTINGS)
    assert a == b
    assert isinstance(a, list) and set(a[0]) == {"generated_text"}


@pytest.mark.parametrize("return_full_text", [True, False])
def test_chat_input_matches_transformers(pipes, return_full_text):
    ours, ref = pipes
    a = ours(CHAT, return_full_text=return_full_text, **SETTINGS)
    b = ref(CHAT, return_full_text=return_full_text, **SETTINGS)
    assert a == b
    if return_full_text:
        assert a[0]["generated_text"][:2] == CHAT and a[0]["generated_text"][-1]["role"] == "assistant"


def test_batches_match_transformers(pipes):
    ours, ref = pipes
    texts = ["the quick brown fox", "hello", "once upon a time there was a"]
    assert ours(texts, **SETTINGS) == ref(texts, **SETTINGS)
    # batched generation with left padding gives the same text as one prompt at a time
    assert ours(texts, batch_size=3, **SETTINGS) == ours(texts, **SETTINGS)
    chats = [CHAT, [{"role": "user", "content": "once upon a time"}]]
    assert ours(chats, **SETTINGS) == ref(chats, **SETTINGS)


def test_loaded_model_and_sampling(pipes):
    ours, _ = pipes
    pipe = autolm.pipeline("text-generation", model=ours.model, tokenizer=ours.tokenizer)
    out = pipe("hello", max_new_tokens=5, do_sample=True, temperature=0.7, num_return_sequences=2)
    assert len(out) == 2 and all(o["generated_text"].startswith("hello") for o in out)


def test_unknown_task():
    with pytest.raises(GenerationError, match="not supported"):
        autolm.pipeline("automatic-speech-recognition", model="x")
