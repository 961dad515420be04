"""Streamers hand out the generated text piece by piece, never half a character, and never hang."""

from __future__ import annotations

import io
import queue
import threading

import pytest
import torch
from generation_helpers import CORPUS, write_model

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


class CountingTokenizer:
    """Wraps a tokenizer and adds up how many ids its `decode` calls were given."""

    def __init__(self, tok):
        self.tok = tok
        self.decoded_ids = 0

    def decode(self, ids, **kwargs):
        self.decoded_ids += len(ids) if isinstance(ids, list) else 1
        return self.tok.decode(ids, **kwargs)


def stream_pieces(streamer_class, tok, ids: list[int], **kwargs) -> list[str]:
    pieces: list[str] = []

    class Collect(streamer_class):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            pieces.append(text)

    streamer = Collect(tok, **kwargs)
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    return [p for p in pieces if p]


def test_long_line_streams_as_transformers_with_linear_work(setup):
    """A 2,000-token line: the same pieces as transformers' TextStreamer, for a decode cost that grows
    linearly (re-decoding the line from its start at each token would cost about n * n / 2 ids)."""
    import transformers

    _, tok = setup
    reference = transformers.AutoTokenizer.from_pretrained(tok.name_or_path)
    line = " ".join(sentence.replace("\n", " ") for sentence in CORPUS)
    ids = (tok(line)["input_ids"] * 100)[:2000]
    assert "\n" not in tok.decode(ids)
    counting = CountingTokenizer(tok)
    ours = stream_pieces(TextStreamer, counting, ids)
    assert ours == stream_pieces(transformers.TextStreamer, reference, ids)
    assert "".join(ours) == tok.decode(ids)
    assert counting.decoded_ids < 10 * len(ids)


def test_random_tokens_stream_as_transformers(setup):
    """Random tokens (partial characters, symbols, control bytes, newlines) give transformers' pieces."""
    import random

    import transformers

    _, tok = setup
    reference = transformers.AutoTokenizer.from_pretrained(tok.name_or_path)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    rng = random.Random(0)
    ids = [rng.choice(vocab) for _ in range(1500)]
    ids += tok("你好，世界！🙂 emoji 🚀 and ❤️ 天气很好。 a-b-c ===== (x) [y]\n")["input_ids"] * 10
    ours = stream_pieces(TextStreamer, tok, ids)
    assert ours == stream_pieces(transformers.TextStreamer, reference, ids)
    assert "".join(ours) == tok.decode(ids)
