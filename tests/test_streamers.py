"""Streamers hand out the generated text piece by piece, never half a character, and never hang."""

from __future__ import annotations

import io
import queue
import threading

import pytest
import torch
from generation_helpers import write_model

import autolm
from autolm import TextIteratorStreamer, TextStreamer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = write_model(tmp_path_factory.mktemp("stream"), "llama")
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    tok = autolm.AutoTokenizer.from_pretrained(directory)
    return model, tok


class Recorder(TextStreamer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.chunks.append(text)


def test_text_streamer_prints_the_decoded_text(setup):
    model, tok = setup
    ids = tok("hello world, the quick", return_tensors="pt").input_ids
    out = io.StringIO()
    generated = model.generate(ids, max_new_tokens=20, streamer=TextStreamer(tok, file=out))
    assert out.getvalue() == tok.decode(generated[0]) + "\n"

    out = io.StringIO()
    streamer = TextStreamer(tok, skip_prompt=True, file=out, skip_special_tokens=True)
    generated = model.generate(ids, max_new_tokens=20, streamer=streamer)
    assert out.getvalue() == tok.decode(generated[0, ids.shape[1] :], skip_special_tokens=True) + "\n"


def test_iterator_streamer_in_a_thread(setup):
    model, tok = setup
    ids = tok("once upon a time", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=30)
    result = {}

    def work():
        result["ids"] = model.generate(ids, max_new_tokens=24, eos_token_id=None, streamer=streamer)

    thread = threading.Thread(target=work)
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tok.decode(result["ids"][0, ids.shape[1] :])


def test_multibyte_characters_are_never_split(setup):
    _, tok = setup
    text = "你好，世界！🙂 emoji 🚀 and ❤️ 天气很好。"
    ids = tok(text)["input_ids"]
    # the byte-level tokenizer really splits some characters across tokens
    assert any("\ufffd" in tok.decode(ids[: i + 1]) for i in range(len(ids)))
    streamer = Recorder(tok)
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(streamer.chunks) == text
    assert all("\ufffd" not in chunk for chunk in streamer.chunks)
    assert len([c for c in streamer.chunks if c]) > 3  # CJK text streams as it comes, not all at the end


def test_an_error_in_generation_reaches_the_consumer(setup):
    model, tok = setup
    streamer = TextIteratorStreamer(tok, timeout=30)
    ids = tok("the dog", return_tensors="pt").input_ids

    def work():
        try:
            model.generate(ids, max_new_tokens=-1, streamer=streamer)
        except ValueError:
            pass  # the thread's copy; the consumer gets its own

    thread = threading.Thread(target=work)
    thread.start()
    with pytest.raises(autolm.errors.GenerationError, match="max_new_tokens"):
        list(streamer)
    thread.join()


def test_timeout_raises_queue_empty(setup):
    _, tok = setup
    streamer = TextIteratorStreamer(tok, timeout=0.05)
    with pytest.raises(queue.Empty):
        next(iter(streamer))


def test_streamer_rejects_batches(setup):
    model, tok = setup
    ids = torch.tensor([[5, 6], [7, 8]])
    with pytest.raises(ValueError, match="one sequence"):
        model.generate(ids, max_new_tokens=2, streamer=TextStreamer(tok, file=io.StringIO()))
