"""When a row is done: an end-of-sequence token, or a stop string in the text.

A stop string counts when it ends inside the newest token (as in transformers): "stop" matches
tokens ["st", "op"] and ["sto", "pper"], not ["stop", "at"], which would have stopped one step earlier.
"""

from __future__ import annotations

import torch

from ..errors import GenerationError


def eos_ids(value: int | list[int] | torch.Tensor | None) -> list[int]:
    """eos_token_id as given in configs (None, an int, or a list) -> a list of ints."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class StopStrings:
    """Finds rows whose text now contains one of `stop_strings`, ending in the last token."""

    def __init__(self, stop_strings: str | list[str], tokenizer):
        if tokenizer is None:
            raise GenerationError(
                "stop_strings needs the tokenizer to read tokens as text; pass tokenizer= to generate() "
                "(e.g. model.generate(ids, stop_strings=['\\n\\n'], tokenizer=tokenizer))."
            )
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not strings or any(not isinstance(s, str) or not s for s in strings):
            raise GenerationError(f"stop_strings must be non-empty strings, got {stop_strings!r}.")
        self.strings = strings
        self.tokenizer = tokenizer
        # A string of n characters spans at most n tokens, plus a couple of tokens of context so that
        # the first one decodes with its leading space intact.
        self.window = max(len(s) for s in strings) + 2

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences: (B, L) ids so far -> (B,) bool, True where a stop string just completed."""
        done = []
        for row in sequences[:, -self.window - 1 :].tolist():
            text = self.tokenizer.decode(row)
            before = len(self.tokenizer.decode(row[:-1]))
            # the match must end after `before`, i.e. inside the newest token
            done.append(any(_ends_after(text, s, before) for s in self.strings))
        return torch.tensor(done, dtype=torch.bool, device=sequences.device)


def _ends_after(text: str, s: str, before: int) -> bool:
    """True when some occurrence of s in text ends after index `before`."""
    i = text.find(s, max(0, before - len(s) + 1))
    return i != -1 and i + len(s) > before


class StoppingCriteria:
    """Base class of a user's criterion (transformers' name): `__call__(input_ids, scores)` returns a bool
    tensor (B,), True for rows that are done."""

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs
    ) -> torch.BoolTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores).")


class StoppingCriteriaList(list):
    """Criteria combined: a row is done when any of them says so."""

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs
    ) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | criterion(input_ids, scores, **kwargs)
        return done

    @property
    def max_length(self) -> int | None:
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


class MaxLengthCriteria(StoppingCriteria):
    """Done once a row has `max_length` tokens (prompt included)."""

    def __init__(self, max_length: int, max_position_embeddings: int | None = None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs
    ) -> torch.BoolTensor:
        done = input_ids.shape[1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
