"""`BatchEncoding`: what a tokenizer call returns, a dict with attribute access and `.to(device)`."""

from __future__ import annotations

from collections import UserDict
from typing import Any

from ..errors import AutolmKeyError, AutolmValueError


class BatchEncoding(UserDict):
    """`{"input_ids": ..., "attention_mask": ...}` that also reads as `enc.input_ids`.

    `encodings` keeps the `tokenizers.Encoding` objects (offsets, word ids) when the call made them.
    """

    def __init__(self, data: dict[str, Any] | None = None, encodings=None, tensor_type: str | None = None):
        super().__init__(data or {})
        self.encodings = encodings
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; `data` itself must not recurse while unpickling
        if name != "data" and name in self.__dict__.get("data", {}):
            return self.data[name]
        raise AttributeError(
            f"BatchEncoding has no attribute {name!r}; keys are {list(self.__dict__.get('data', {}))}"
        )

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            # enc[0] is the first sequence's `tokenizers.Encoding`, as in transformers
            if self.encodings is None:
                raise AutolmKeyError(
                    "Indexing by integer needs the encodings of a tokenizer call; use a key name."
                )
            return self.encodings[key]
        return self.data[key]

    def __getstate__(self):
        return {"data": self.data, "encodings": self.encodings}

    def __setstate__(self, state):
        self.data = state["data"]
        self.encodings = state["encodings"]

    def tokens(self, batch_index: int = 0) -> list[str]:
        if self.encodings is None:
            raise AutolmValueError("tokens() needs the encodings of a tokenizer call.")
        return self.encodings[batch_index].tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        if self.encodings is None:
            raise AutolmValueError("word_ids() needs the encodings of a tokenizer call.")
        return self.encodings[batch_index].word_ids

    def convert_to_tensors(self, tensor_type: str | None) -> BatchEncoding:
        if tensor_type is None:
            return self
        if tensor_type not in ("pt", "np"):
            raise AutolmValueError(
                f"return_tensors={tensor_type!r} is not supported; use 'pt', 'np' or None."
            )
        if tensor_type == "pt":
            import torch  # only here: importing the tokenizer must stay free of torch

            def make(v):
                return v if isinstance(v, torch.Tensor) else torch.tensor(v)
        else:
            import numpy as np

            def make(v):
                return np.asarray(v)

        for key, value in self.data.items():
            try:
                self.data[key] = make(value)
            except (ValueError, TypeError, RuntimeError) as e:
                raise AutolmValueError(
                    f"Could not make a tensor of {key!r}: the sequences have different lengths. "
                    "Pass padding=True (and truncation=True) to get a rectangular batch."
                ) from e
        return self

    def to(self, device) -> BatchEncoding:
        """Move every tensor to `device` (a string, `torch.device` or int); returns self."""
        for key, value in self.data.items():
            if hasattr(value, "to"):
                self.data[key] = value.to(device=device)
        return self
