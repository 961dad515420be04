"""KV caches: each new token costs one step. Both classes expose `update(k, v, layer_idx)` -> (keys, values).

`DynamicCache` grows as needed (amortised: its buffers double, so a step is a slice write, not a concat).
`StaticCache` is allocated once at its maximum length, so shapes stay fixed for `torch.compile`.
"""

from __future__ import annotations

import torch


class DynamicCache:
    def __init__(self, num_layers: int | None = None, **_):
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._len: list[int] = []

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v of shape (B, KVH, T, D) for one layer; return all keys and values so far."""
        if layer_idx == len(self._keys):
            capacity = max(2 * k.shape[2], 64)
            self._keys.append(k.new_empty(*k.shape[:2], capacity, k.shape[3]))
            self._values.append(v.new_empty(*v.shape[:2], capacity, v.shape[3]))
            self._len.append(0)
        start, end = self._len[layer_idx], self._len[layer_idx] + k.shape[2]
        if end > self._keys[layer_idx].shape[2]:
            self._grow(layer_idx, 2 * end)
        self._keys[layer_idx][:, :, start:end] = k
        self._values[layer_idx][:, :, start:end] = v
        self._len[layer_idx] = end
        return self._keys[layer_idx][:, :, :end], self._values[layer_idx][:, :, :end]

    def reserve(self, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Make every layer's buffers hold `length` positions; return the whole buffers (B, KVH, capacity, D),
        for a writer that fills slots itself and then calls `advance` (the native decode step)."""
        for i in range(len(self._keys)):
            if length > self._keys[i].shape[2]:
                self._grow(i, 2 * length)
        return self._keys, self._values

    def advance_to(self, length: int) -> None:
        """Count positions [0, length) as written in every layer (after `reserve` and a direct write)."""
        self._len = [length] * len(self._len)

    def _grow(self, layer_idx: int, capacity: int) -> None:
        for store in (self._keys, self._values):
            old = store[layer_idx]
            new = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            new[:, :, : old.shape[2]] = old
            store[layer_idx] = new

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._len[layer_idx] if layer_idx < len(self._len) else 0

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Select batch rows (e.g. to repeat prompts for num_return_sequences)."""
        self._keys = [k.index_select(0, index) for k in self._keys]
        self._values = [v.index_select(0, index) for v in self._values]

    def crop(self, length: int) -> None:
        self._len = [min(n, length) for n in self._len]

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._len[layer_idx]
        return self._keys[layer_idx][:, :, :n], self._values[layer_idx][:, :, :n]


class StaticCache:
    """Fixed-size cache for compiled decoding: keys/values live in (B, KVH, max_cache_len, D) buffers.

    The model sets `cache_position` (the absolute slots being written, a LongTensor) before the layers run;
    attention then covers the whole buffer, and the caller's mask hides the slots not yet written.
    Without `cache_position` the cache appends after what it has seen, like `DynamicCache`.
    """

    def __init__(
        self,
        config,
        max_batch_size: int,
        max_cache_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        shape = (max_batch_size, kv_heads, max_cache_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)
        ]
        self.max_batch_size = max_batch_size
        self.max_cache_len = max_cache_len
        self._seen = 0
        self.cache_position: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v of shape (B, KVH, T, D) at `cache_position`; return the whole buffers."""
        pos = self.cache_position
        if pos is None:
            pos = torch.arange(self._seen, self._seen + k.shape[2], device=k.device)
        self.keys[layer_idx].index_copy_(2, pos, k)
        self.values[layer_idx].index_copy_(2, pos, v)
        if layer_idx == len(self.keys) - 1 and not torch.compiler.is_compiling():
            # the length is bookkeeping for eager callers; a compiled step must not read tensors into ints
            self._seen = (
                max(self._seen, int(pos[-1]) + 1)
                if self.cache_position is not None
                else self._seen + k.shape[2]
            )
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen

    def reserve(self, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The whole buffers, for a writer that fills slots itself (the native decode step)."""
        return self.keys, self.values

    def advance_to(self, length: int) -> None:
        """Record that every layer's slots below `length` were written directly."""
        self._seen = max(self._seen, length)

    def reset(self) -> None:
        """Forget the contents (the buffers are reused, so a compiled step keeps its graph)."""
        for buffer in (*self.keys, *self.values):
            buffer.zero_()
        self._seen = 0
        self.cache_position = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer_idx][:, :, : self._seen], self.values[layer_idx][:, :, : self._seen]
