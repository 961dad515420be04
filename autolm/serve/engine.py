"""Continuous batching: one model, one scheduler thread, requests joining and leaving at token boundaries.

The running batch is B rows (one per choice of a request) sharing one KV cache of L columns. Rows are
aligned on the right: a row whose sequence is shorter than L has its first columns masked out (left
padding), and every row writes its next token's keys and values into the same new column. Each row has
its own position ids, so a row's numbers do not depend on the padding in front of it.

- joining: a request's prompt is prefilled alone (1 row), its first token is chosen at once (that is the
  time to first token), and its cache is copied into the batch cache's last columns, once per choice;
- a step: one native decode step (`NativeDecoder.step`) for every row, or the model's forward when the
  native step does not cover the model;
- leaving: finished or cancelled rows are dropped with `index_select`; columns now masked for every row
  are trimmed from the front.

Everything in here that touches torch runs on the scheduler thread; `submit` and `cancel` are the only
calls other threads make.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..generation.layout import prepare_for_decoding
from ..generation.loop import decode_one_token, prefill
from ..kernels.decoder import native_decoder
from ..models.cache import DynamicCache

logger = logging.getLogger("autolm.serve")


class QueueFull(Exception):
    """The bounded queue of waiting requests is full."""


class ShuttingDown(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class TokenInfo:
    """One generated token as the response shows it: its text, its logprob and the top alternatives."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[str, float]] | None = None


# an event for the request's owner: ("delta", choice, text, [TokenInfo]) or ("done", choice, reason)
Event = tuple


class Sequence:
    """One choice of a request: the tokens it generated, its text so far, its own random generator."""

    def __init__(self, request: Request, index: int):
        self.request, self.index = request, index
        self.tokens: list[int] = []
        self.text = ""  # the text decoded so far (stop strings are searched in it)
        self.sent = 0  # how much of `text` went out (the rest may be the start of a stop string)
        self.prefix_offset = self.read_offset = 0  # incremental detokenization (see `_detokenize`)
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None
        params = request.params
        if params.temperature > 0:
            self.generator = torch.Generator()
            if params.seed is not None:
                self.generator.manual_seed(params.seed + index)
            else:
                self.generator.seed()
        self.counts: torch.Tensor | None = None  # generated-token counts, for the OpenAI penalties


class Request:
    """A prompt, its settings and `n` choices; `emit` receives the events (called on the scheduler
    thread, so it must hand them over without blocking)."""

    def __init__(self, prompt: list[int], params: SamplingParams, n: int, emit: Callable[[Event], None]):
        self.prompt, self.params, self.n, self.emit = prompt, params, n, emit
        self.sequences = [Sequence(self, i) for i in range(n)]
        self.cancelled = False
        self.submitted = time.perf_counter()

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.sequences)


class Engine:
    """The scheduler: call `start()`, then `submit` requests from any thread; `stop()` ends it.

    Args:
        model: a causal LM (autolm).
        tokenizer: its tokenizer (decodes the text, knows eos).
        max_batch: rows decoded together (the native step takes up to 8).
        max_queue: requests waiting for a row; `submit` raises `QueueFull` beyond it.
        max_context: positions a sequence may reach (prompt + reply).
    """

    def __init__(self, model, tokenizer, max_batch: int = 8, max_queue: int = 64, max_context: int = 2048):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.max_context = max_batch, max_queue, max_context
        self.eos = _eos_ids(model, tokenizer)
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.waiting: deque[Request] = deque()
        self.condition = threading.Condition()
        self.thread: threading.Thread | None = None
        self.running = False
        self.accepting = True
        self.deadline: float | None = None  # on shutdown: rows still going then are ended
        # the batch (scheduler thread only)
        self.rows: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.valid: torch.Tensor | None = None  # (B, L) 1 where a column holds a real token of the row
        self.positions: torch.Tensor | None = None  # (B, 1) the next token's position per row
        self.next_tokens: torch.Tensor | None = None  # (B,) the tokens the next step feeds
        self.native = None
        # counters for /metrics
        self.requests_done = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last steps

    # --- other threads --------------------------------------------------------------------------

    def start(self) -> None:
        with torch.inference_mode():
            prepare_for_decoding(self.model)
        self.native = native_decoder(self.model)
        logger.info("decode path: %s", "native step" if self.native is not None else "torch forward")
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="autolm-scheduler", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> None:
        with self.condition:
            if not self.accepting or not self.running:
                raise ShuttingDown("The server is shutting down.")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the limit is {self.max_queue}).")
            self.waiting.append(request)
            self.prompt_tokens += len(request.prompt)
            self.condition.notify()

    def cancel(self, request: Request) -> None:
        """Drop the request at the next token boundary (a client that went away)."""
        with self.condition:
            request.cancelled = True
            self.condition.notify()

    def drain(self, grace: float) -> None:
        """Take no new requests; rows still running after `grace` seconds end with reason "length"."""
        with self.condition:
            self.accepting = False
            self.deadline = time.monotonic() + grace
            self.condition.notify()

    def stop(self) -> None:
        with self.condition:
            self.running = False
            self.accepting = False
            self.condition.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.rows)

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self.recent) if now - t <= window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    # --- the scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.condition:
                while self.running and not self.waiting and not self.rows:
                    self.condition.wait()
                if not self.running:
                    break
                admitted = self._take_admissible()
            try:
                with torch.inference_mode():
                    for request in admitted:
                        self._admit(request)
                    self._drop_finished()
                    if self.rows:
                        self._step()
                        self._drop_finished()
            except Exception as error:  # a bug must not leave clients waiting forever
                logger.exception("the decode loop failed; ending the running requests")
                for seq in self.rows + [s for r in admitted for s in r.sequences]:
                    if seq.finish_reason is None:
                        seq.finish_reason = "error"
                        seq.request.emit(("error", seq.index, f"generation failed: {error}"))
                self._reset_batch()
        for seq in self.rows:
            self._finish(seq, "length")
        self._reset_batch()
        with self.condition:
            for request in self.waiting:
                for seq in request.sequences:
                    request.emit(("error", seq.index, "The server shut down."))
            self.waiting.clear()

    def _take_admissible(self) -> list[Request]:
        """Waiting requests that fit in the free rows now (in order; a large `n` waits its turn)."""
        free = self.max_batch - len(self.rows)
        taken = []
        while self.waiting and (self.waiting[0].cancelled or self.waiting[0].n <= free):
            request = self.waiting.popleft()
            if not request.cancelled:
                taken.append(request)
                free -= request.n
        return taken

    def _admit(self, request: Request) -> None:
        """Prefill the prompt alone, choose each choice's first token, and add the rows still going."""
        if request.cancelled:
            return
        model = self.model
        ids = torch.tensor([request.prompt], dtype=torch.long)
        P = ids.shape[1]
        cache = DynamicCache()
        logits = prefill(model, ids, None, torch.arange(P)[None], cache)  # (1, vocab)
        logits = logits.expand(request.n, -1)
        tokens = self._choose(request.sequences, logits)
        going = []
        for seq, token in zip(request.sequences, tokens):
            if self._record(seq, token):
                going.append(seq)
        if not going:
            return
        n = len(going)
        keys = [k[:, :, :P].expand(n, -1, -1, -1) for k, _ in _layers(cache)]  # each (n, KVH, P, D)
        values = [v[:, :, :P].expand(n, -1, -1, -1) for _, v in _layers(cache)]
        self._join(going, keys, values, P, [seq.tokens[-1] for seq in going])

    def _join(self, rows: list[Sequence], keys, values, P: int, tokens: list[int]) -> None:
        """Copy new rows' caches (n, KVH, P, D) into the batch cache's last columns."""
        n = len(rows)
        if self.cache is None:
            L, B = 0, 0
        else:
            L, B = self.cache.get_seq_length(), len(self.rows)
        width = max(L, P)
        capacity = max(2 * width, 64)
        cache = DynamicCache()
        new_keys, new_values = [], []
        for layer, (k, v) in enumerate(zip(keys, values)):
            shape = (B + n, k.shape[1], capacity, k.shape[3])
            nk, nv = k.new_zeros(shape), v.new_zeros(shape)
            if B:
                old_k, old_v = _layers(self.cache)[layer]
                nk[:B, :, width - L : width] = old_k
                nv[:B, :, width - L : width] = old_v
            nk[B:, :, width - P : width] = k
            nv[B:, :, width - P : width] = v
            new_keys.append(nk)
            new_values.append(nv)
        cache._keys, cache._values, cache._len = new_keys, new_values, [width] * len(new_keys)
        valid = torch.zeros(B + n, width, dtype=torch.long)
        if B:
            valid[:B, width - L :] = self.valid
        valid[B:, width - P :] = 1
        positions = torch.full((n, 1), P, dtype=torch.long)
        token_tensor = torch.tensor(tokens, dtype=torch.long)
        self.cache, self.valid = cache, valid
        self.positions = positions if not B else torch.cat([self.positions, positions])
        self.next_tokens = token_tensor if not B else torch.cat([self.next_tokens, token_tensor])
        self.rows.extend(rows)

    def _step(self) -> None:
        """One decode step for every row; then choose and record each row's next token."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            for seq in self.rows:
                self._finish(seq, "length")
            return
        B = len(self.rows)
        mask = torch.cat([self.valid, torch.ones(B, 1, dtype=torch.long)], dim=1)
        logits = None
        if self.native is not None:
            logits = self.native.step(self.next_tokens, self.positions, mask, self.cache)
        if logits is None:
            logits = decode_one_token(self.model, self.next_tokens, self.positions, mask, self.cache)
        self.valid = mask
        self.positions = self.positions + 1
        tokens = self._choose(self.rows, logits)
        for seq, token in zip(self.rows, tokens):
            self._record(seq, token)
        self.next_tokens = torch.tensor(tokens, dtype=torch.long)
        now = time.perf_counter()
        self.recent.append((now, B))
        while self.recent and now - self.recent[0][0] > 30:
            self.recent.popleft()

    def _choose(self, rows: list[Sequence], logits: torch.Tensor) -> list[int]:
        """The next token of each row: greedy (argmax of the logits, as `generate`) or sampled with the
        row's own generator after the OpenAI penalties, temperature and top_p."""
        greedy = logits.argmax(dim=-1).tolist()
        chosen = []
        for r, seq in enumerate(rows):
            params = seq.request.params
            row = logits[r]
            if params.presence_penalty or params.frequency_penalty:
                if seq.counts is None:
                    seq.counts = torch.zeros(row.shape[-1])
                # OpenAI: logit - count * frequency_penalty - (count > 0) * presence_penalty
                row = row - seq.counts * params.frequency_penalty - (seq.counts > 0) * params.presence_penalty
                greedy[r] = int(row.argmax())
            if seq.generator is None:
                token = greedy[r]
            else:
                scores = row / params.temperature
                if params.top_p < 1.0:
                    ascending, order = torch.sort(scores)
                    drop = ascending.softmax(-1).cumsum(-1) <= 1 - params.top_p
                    drop[-1] = False
                    scores = scores.masked_fill(drop.scatter(0, order, drop), -float("inf"))
                token = int(torch.multinomial(scores.softmax(-1), 1, generator=seq.generator))
            if seq.counts is not None:
                seq.counts[token] += 1
            info = TokenInfo(token, self.tokenizer.decode([token]))
            if params.logprobs:
                logprobs = row.log_softmax(-1)
                info.logprob = float(logprobs[token])
                if params.top_logprobs:
                    top = torch.topk(logprobs, params.top_logprobs)
                    info.top = [
                        (self.tokenizer.decode([i]), float(v))
                        for v, i in zip(top.values.tolist(), top.indices.tolist())
                    ]
            seq.pending_info = info
            chosen.append(token)
        return chosen

    def _record(self, seq: Sequence, token: int) -> bool:
        """Append `token` to the row, emit its text, and say whether the row goes on."""
        seq.tokens.append(token)
        self.generated_tokens += 1
        request, params = seq.request, seq.request.params
        info = seq.pending_info
        if token in self.eos:
            info.text = ""
            self._detokenize(seq, final=True)
            self._flush(seq, [info])
            self._finish(seq, "stop")
            return False
        done = (
            len(seq.tokens) >= params.max_tokens or len(request.prompt) + len(seq.tokens) >= self.max_context
        )
        self._detokenize(seq, final=done)
        cut = _find_stop(seq.text, params.stop, seq.sent)
        if cut is not None:
            seq.text = seq.text[:cut]
            self._flush(seq, [info])
            self._finish(seq, "stop")
            return False
        if done:
            self._flush(seq, [info])
            self._finish(seq, "length")
            return False
        hold = _held_back(seq.text, params.stop, seq.sent)
        self._flush(seq, [info], upto=len(seq.text) - hold)
        return not request.cancelled

    def _detokenize(self, seq: Sequence, final: bool = False) -> None:
        """Add the newly completed text: decode a short window of tokens, and hold the last ones back
        while they end in an incomplete character (unless `final`: the reply ends there)."""
        tokens = seq.tokens
        before = self.tokenizer.decode(tokens[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(tokens[seq.prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            seq.text += after[len(before) :]
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(tokens)

    def _flush(self, seq: Sequence, infos: list[TokenInfo], upto: int | None = None) -> None:
        end = len(seq.text) if upto is None else upto
        text = seq.text[seq.sent : end] if end > seq.sent else ""
        seq.sent = max(seq.sent, end)
        seq.request.emit(("delta", seq.index, text, infos))

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.finish_reason is not None:
            return
        if seq.sent < len(seq.text):
            seq.request.emit(("delta", seq.index, seq.text[seq.sent :], []))
            seq.sent = len(seq.text)
        seq.finish_reason = reason
        seq.request.emit(("done", seq.index, reason))
        if all(s.finish_reason is not None for s in seq.request.sequences):
            self.requests_done += 1

    def _drop_finished(self) -> None:
        """Drop rows that finished or whose client left; trim the columns no row needs any more."""
        for seq in self.rows:
            if seq.request.cancelled and seq.finish_reason is None:
                seq.finish_reason = "cancelled"
        keep = [i for i, seq in enumerate(self.rows) if seq.finish_reason is None]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, dtype=torch.long)
        valid = self.valid.index_select(0, index)
        used = valid.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else valid.shape[1]
        for store in (self.cache._keys, self.cache._values):
            for i, buffer in enumerate(store):
                store[i] = buffer[:, :, start:].index_select(0, index)
        self.cache._len = [n - start for n in self.cache._len]
        self.valid = valid[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]

    def _reset_batch(self) -> None:
        self.rows, self.cache, self.valid, self.positions, self.next_tokens = [], None, None, None, None


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [cache[i] for i in range(len(cache))]


def _eos_ids(model, tokenizer) -> set[int]:
    """The ids that end a reply: the generation config's eos ids and the tokenizer's eos."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for source in (getattr(config, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _find_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the first stop string starts in `text`, searching only text that has not gone out yet
    (and the stop's length before it); None when none occurs."""
    best = None
    for stop in stops:
        at = text.find(stop, max(0, sent - len(stop) + 1))
        if at != -1 and (best is None or at < best):
            best = at
    return best


def _held_back(text: str, stops: list[str], sent: int) -> int:
    """How many characters at the end of `text` could be the start of a stop string (not sent yet)."""
    hold = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text) - sent), 0, -1):
            if text.endswith(stop[:length]):
                hold = max(hold, length)
                break
    return hold
