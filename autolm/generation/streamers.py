"""Streamers: receive token ids from `generate` (`put`, then `end`) and hand out text as it completes.

Text is released as transformers' streamers release it: letters and digits at once, CJK characters at once,
anything else up to the last space or newline, so never a "\\ufffd" whose bytes have not all arrived yet
(Chinese, emoji). Only the tokens since the text was last all out are decoded again: linear work per line.
"""

from __future__ import annotations

import queue
import sys
import unicodedata
from typing import TextIO

import torch

from ..errors import GenerationError


def is_cjk(ch: str) -> bool:
    """CJK ideographs print at once: they are words by themselves and have no spaces between them."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_wordlike(ch: str) -> bool:
    """Letters (with their marks), digits and spaces print at once, so text without spaces streams too."""
    return ch.isspace() or unicodedata.category(ch)[0] in "LMN"


# Tokens kept as decoding context when the window restarts
_CONTEXT = 4


class TextStreamer:
    """Decode tokens as they arrive and print each finished word.

    Args:
        tokenizer: used to decode (`tokenizer.decode(ids, **decode_kwargs)`).
        skip_prompt: leave out the prompt, which `generate` sends first.
        file: where to print (stdout by default); subclasses override `on_finalized_text` instead.
        **decode_kwargs: e.g. `skip_special_tokens=True`.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, file: TextIO | None = None, **decode_kwargs):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.file = file
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: torch.Tensor | list[int]) -> None:
        ids = value.tolist() if isinstance(value, torch.Tensor) else list(value)
        if ids and isinstance(ids[0], list):
            if len(ids) > 1:
                raise GenerationError(
                    f"{type(self).__name__} streams one sequence; generate got a batch of {len(ids)}. "
                    "Stream one prompt at a time (and num_return_sequences=1)."
                )
            ids = ids[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        pending = text[self.print_len :]
        if text.endswith("\n"):
            # a line is done: release it and go on decoding from its last token, which keeps the
            # leading space of the next line
            printable = pending
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        else:
            if (text and is_cjk(text[-1])) or all(_is_wordlike(ch) for ch in pending):
                printable = pending
            else:
                # up to the last space: a symbol may start markup, or be an incomplete character
                printable = text[self.print_len : text.rfind(" ") + 1]
            self.print_len += len(printable)
            if self.print_len == len(text) and len(self.token_cache) > _CONTEXT:
                # All is out: decode what follows from the last few tokens only, so a long line costs
                # linear work rather than quadratic (the same text: they are enough to join words)
                self.token_cache = self.token_cache[-_CONTEXT:]
                self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        if printable:
            self.on_finalized_text(printable)

    def end(self) -> None:
        """Release what is left (even an incomplete character: nothing more will come)."""
        printable = ""
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        # Printing is this class's job (a user asked for console output), so it writes to the stream directly.
        out = self.file or sys.stdout
        out.write(text + ("\n" if stream_end else ""))
        out.flush()


class _Failure:
    """Carries an exception from the generating thread to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class TextIteratorStreamer(TextStreamer):
    """A streamer to iterate over from another thread: `for text in streamer: ...` while `generate` runs.

    An exception inside `generate` is re-raised in the consumer; with `timeout`, waiting longer than that
    for the next piece raises `queue.Empty`.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: queue.Queue = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def put_exception(self, exc: BaseException) -> None:
        """Called by `generate` when it fails, so the consumer raises instead of waiting."""
        self.text_queue.put(_Failure(exc))

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        item = self.text_queue.get(timeout=self.timeout)
        if item is self.stop_signal:
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.exc
        return item
