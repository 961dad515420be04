"""The question-answering pipeline: the likeliest answer spans of a context for a question (an
extractive QA head's start and end scores), as transformers 4's pipeline gave them (transformers 5
dropped the task; the outputs and options are the same)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import GenerationError
from .inputs import forward


class QuestionAnsweringPipeline:
    """Call with `question=` and `context=` (strings or equal lists), a {"question", "context"} dict, or
    a list of them. Each answer is {"score", "start", "end", "answer"}: `start`/`end` are character
    offsets in the context, `score` is p(start) * p(end). One answer (top_k=1) comes as a dict, more
    as a list.

    Options: `top_k`; `max_answer_len` (tokens); `handle_impossible_answer` (also rank the empty answer,
    scored by the [CLS] token); long contexts are cut into windows of `max_seq_len` tokens that overlap
    by `doc_stride`, each scored, the best answers of all kept; `align_to_words` widens a span to whole
    words.
    """

    task = "question-answering"
    _OPTIONS = {
        "top_k": 1,
        "doc_stride": None,
        "max_answer_len": 15,
        "max_seq_len": None,
        "max_question_len": 64,
        "handle_impossible_answer": False,
        "align_to_words": True,
    }

    def __init__(self, model, tokenizer, **kwargs):
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = {k: kwargs.pop(k, v) for k, v in self._OPTIONS.items()}

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, *args, **kwargs) -> Any:
        options = {k: kwargs.pop(k, v) for k, v in self.defaults.items()}
        examples = self._examples(args, kwargs)
        results = [self._one(question, context, options) for question, context in examples]
        if len(results) == 1 and not (args and isinstance(args[0], list)):
            return results[0]
        return results

    @staticmethod
    def _examples(args: tuple, kwargs: dict) -> list[tuple[str, str]]:
        if "question" in kwargs or "context" in kwargs:
            question, context = kwargs.pop("question", None), kwargs.pop("context", None)
            if isinstance(question, list) and isinstance(context, str):
                context = [context] * len(question)
            if isinstance(question, str) and isinstance(context, str):
                return [(question, context)]
            if isinstance(question, list) and isinstance(context, list) and len(question) == len(context):
                return list(zip(question, context))
            raise GenerationError(
                "question-answering takes question= and context= as two strings, or two lists of one length."
            )
        items = args[0] if len(args) == 1 else list(args)
        items = items if isinstance(items, list) else [items]
        if not items or not all(isinstance(x, dict) and {"question", "context"} <= set(x) for x in items):
            raise GenerationError(
                'question-answering inputs are question=..., context=... or {"question": ..., "context": ...} '
                "dicts (or a list of them)."
            )
        return [(x["question"], x["context"]) for x in items]

    def _one(self, question: str, context: str, options: dict) -> dict | list[dict]:
        if not question or not context:
            raise GenerationError("question-answering needs a non-empty question and context.")
        max_seq_len = options["max_seq_len"] or min(self.tokenizer.model_max_length, 384)
        doc_stride = options["doc_stride"]
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise GenerationError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len}).")
        question_first = self.tokenizer.padding_side == "right"
        first, second = (question, context) if question_first else (context, question)
        encoded = self.tokenizer(
            first,
            text_pair=second,
            truncation="only_second" if question_first else "only_first",
            max_length=max_seq_len,
            stride=doc_stride,
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        context_index = 1 if question_first else 0
        answers: list[dict] = []
        null_score = 1000000.0
        for window in range(len(encoded["input_ids"])):
            encoding = encoded.encodings[window]
            ids = torch.tensor([encoded["input_ids"][window]])
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if "token_type_ids" in encoded:
                inputs["token_type_ids"] = torch.tensor([encoded["token_type_ids"][window]])
            out = forward(self.model, inputs)
            # the tokens an answer may use: the context's, and [CLS] for "no answer"
            allowed = np.array([s == context_index for s in encoding.sequence_ids])
            if self.tokenizer.cls_token_id is not None:
                allowed |= ids[0].numpy() == self.tokenizer.cls_token_id
            start = _softmax(np.where(allowed, out.start_logits[0].float().numpy(), -10000.0))
            end = _softmax(np.where(allowed, out.end_logits[0].float().numpy(), -10000.0))
            if options["handle_impossible_answer"]:
                null_score = min(null_score, float(start[0] * end[0]))
            start[0] = end[0] = 0.0
            spans = _best_spans(
                start, end, options["top_k"], options["max_answer_len"], np.flatnonzero(allowed)
            )
            for s, e, score in spans:
                lo, hi = self._span(encoding, s, e, context_index, options["align_to_words"])
                answers.append({"score": score, "start": lo, "end": hi, "answer": context[lo:hi]})
        if options["handle_impossible_answer"]:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[: options["top_k"]]
        return answers[0] if len(answers) == 1 else answers

    @staticmethod
    def _span(encoding, s: int, e: int, context_index: int, align_to_words: bool) -> tuple[int, int]:
        """Character offsets of tokens s..e in the context, widened to whole words when asked."""
        if align_to_words:
            try:
                lo = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=context_index)[0]
                hi = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=context_index)[1]
                return lo, hi
            except Exception:  # a tokenizer without words: keep to the token offsets
                pass
        return encoding.offsets[s][0], encoding.offsets[e][1]


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.exp(x - x.max())
    return x / x.sum()


def _best_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_len: int, allowed: np.ndarray):
    """The `top_k` spans (s <= e < s + max_len) by p(start) * p(end), both ends in `allowed` tokens."""
    scores = np.tril(np.triu(np.outer(start, end)), max_len - 1)
    flat = scores.ravel()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[:top_k]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, scores.shape)
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    return [(int(s), int(e), float(scores[s, e])) for s, e in zip(starts[keep], ends[keep])]
