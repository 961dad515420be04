"""Dequantizing ggml tensors with whole-tensor torch ops.

Every quantized tensor is a run of fixed-size blocks. Each function here takes those blocks as a
`(n_blocks, block_bytes)` uint8 tensor and returns `(n_blocks, block_elems)` float32, with no loop
over blocks: fields are sliced out column-wise and bit fields unpacked with broadcast shifts. The
arithmetic follows ggml's reference order (scale times value, then minus the offset) in float32,
so results match `gguf.quants.dequantize` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import GGUFError

Q = GGMLQuantizationType


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 scalar at byte `offset` of every block, as float32 of shape (n, 1)."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).to(torch.float32)


def _shifts(*values: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8).reshape(shape)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2k) float32: all low nibbles, then all high nibbles (ggml's order in 32-blocks)."""
    out = torch.empty(qs.shape[0], 2, qs.shape[1], dtype=torch.uint8)
    torch.bitwise_and(qs, 0x0F, out=out[:, 0])
    torch.bitwise_right_shift(qs, 4, out=out[:, 1])
    return out.reshape(qs.shape[0], -1)


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) single bits, least significant bit of byte 0 first."""
    return ((qh.unsqueeze(-1) >> _shifts(*range(8), shape=(1, 1, 8))) & 1).reshape(qh.shape[0], -1)


# In-place float ops below keep one full-size float buffer per tensor, in ggml's order of operations.


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    return _nibbles(b[:, 2:18]).to(torch.float32).sub_(8).mul_(_f16(b, 0))


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _nibbles(b[:, 4:20]).to(torch.float32).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 6:22]) | (_bits(b[:, 2:6]) << 4)
    return q.to(torch.float32).sub_(16).mul_(_f16(b, 0))


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 8:24]) | (_bits(b[:, 4:8]) << 4)
    return q.to(torch.float32).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:34].contiguous().view(torch.int8).to(torch.float32).mul_(_f16(b, 0))


# --- K-quants: 256-value super-blocks ------------------------------------------------------------


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    # scales[16] | qs[64] | d | dmin; two halves of 128 values, each 4 shifts x 32 bytes
    n = b.shape[0]
    scales = b[:, 0:16].reshape(n, 2, 4, 2, 1)  # (half, shift, 16-group)
    d, dmin = _f16(b, 80).reshape(n, 1, 1, 1, 1), _f16(b, 82).reshape(n, 1, 1, 1, 1)
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6, shape=(1, 1, 4, 1))) & 3
    q = q.reshape(n, 2, 4, 2, 16)
    dl = d * (scales & 0x0F).to(torch.float32)
    ml = dmin * (scales >> 4).to(torch.float32)
    return (dl * q.to(torch.float32) - ml).reshape(n, 256)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    # hmask[32] | qs[64] | scales[12] | d; 16 signed 6-bit scales, low 4 bits then high 2 bits packed
    n = b.shape[0]
    packed = b[:, 96:108]
    low = (packed[:, 0:8].reshape(n, 1, 8) >> _shifts(0, 4, shape=(1, 2, 1))) & 0x0F
    high = (packed[:, 8:12].reshape(n, 1, 4) >> _shifts(0, 2, 4, 6, shape=(1, 4, 1))) & 3
    scales = (low.reshape(n, 16) | (high.reshape(n, 16) << 4)).to(torch.float32) - 32
    d = _f16(b, 108)
    q = (b[:, 32:96].reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6, shape=(1, 1, 4, 1))) & 3
    # a clear high bit means "subtract 4"
    hbit = (b[:, 0:32].reshape(n, 1, 1, 32) >> _shifts(*range(8), shape=(1, 2, 4, 1))) & 1
    values = q.to(torch.float32) - 4 * (1 - hbit).to(torch.float32)
    dl = (d * scales).reshape(n, 2, 4, 2, 1)
    return (dl * values.reshape(n, 2, 4, 2, 16)).reshape(n, 256)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, each (n, 8) float32."""
    sc_lo, m_lo = packed[:, 0:4] & 63, packed[:, 4:8] & 63
    sc_hi = (packed[:, 8:12] & 0x0F) | ((packed[:, 0:4] >> 6) << 4)
    m_hi = (packed[:, 8:12] >> 4) | ((packed[:, 4:8] >> 6) << 4)
    scale = torch.cat((sc_lo, sc_hi), dim=1).to(torch.float32)
    minimum = torch.cat((m_lo, m_hi), dim=1).to(torch.float32)
    return scale, minimum


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # d | dmin | scales[12] | qs[128]; 8 sub-blocks of 32: each 32 bytes give 2 sub-blocks (low, high)
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    scale, minimum = _k_scale_min(b[:, 4:16])
    qs = b[:, 16:144].reshape(n, 4, 1, 32)
    q = torch.cat((qs & 0x0F, qs >> 4), dim=2).reshape(n, 8, 32)
    dl, ml = (d * scale).unsqueeze(-1), (dmin * minimum).unsqueeze(-1)
    return (dl * q.to(torch.float32) - ml).reshape(n, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # d | dmin | scales[12] | qh[32] | qs[128]; bit s of qh[l] is the fifth bit of sub-block s
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    scale, minimum = _k_scale_min(b[:, 4:16])
    qs = b[:, 48:176].reshape(n, 4, 1, 32)
    q = torch.cat((qs & 0x0F, qs >> 4), dim=2).reshape(n, 8, 32)
    high = (b[:, 16:48].reshape(n, 1, 32) >> _shifts(*range(8), shape=(1, 8, 1))) & 1
    q = q | (high << 4)
    dl, ml = (d * scale).unsqueeze(-1), (dmin * minimum).unsqueeze(-1)
    return (dl * q.to(torch.float32) - ml).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # ql[128] | qh[64] | scales[16] (int8) | d; two halves of 128 values, 4 runs of 32 each
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 1, 2, 32)  # (half, nibble, which 32 bytes, l)
    low = torch.cat((ql & 0x0F, ql >> 4), dim=2).reshape(n, 2, 4, 32)  # run = nibble * 2 + which
    high = (b[:, 128:192].reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6, shape=(1, 1, 4, 1))) & 3
    q = (low | (high << 4)).to(torch.float32) - 32
    scales = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = _f16(b, 208)
    dl = (d * scales).reshape(n, 2, 4, 2, 1)
    return (dl * q.reshape(n, 2, 4, 2, 16)).reshape(n, 256)


BLOCK_DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q8_0: _q8_0,
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
SUPPORTED_TYPES = tuple(FLOAT_TYPES) + tuple(BLOCK_DEQUANTIZERS)

# Blocks dequantized per call: bounds the temporaries (a few bytes per value) for big tensors.
_CHUNK_BLOCKS = 1 << 16
# Below this many values (64M) a tensor is unpacked on one thread (see `_few_threads`).
_PARALLEL_MIN = 1 << 26


@contextmanager
def _few_threads(count: int) -> Iterator[None]:
    """Unpacking is memory-bound: a second thread gains little, and on a machine whose cores are busy
    every parallel op waits for a descheduled thread (measured 3-10x slower on 2 shared cores, even
    for a 28M-value embedding). So all but huge tensors run on one thread."""
    threads = torch.get_num_threads()
    if count >= _PARALLEL_MIN or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def dequantize(
    data: np.ndarray,
    qtype: GGMLQuantizationType | int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    *,
    name: str = "<tensor>",
    where: str = "<memory>",
) -> torch.Tensor:
    """Turn a ggml tensor's stored data into a torch tensor of `shape` and `dtype`.

    Float types are wrapped without a copy (`torch.from_numpy`) and cast only if `dtype` differs;
    block types are unpacked in chunks into one preallocated output.

    Args:
        data: the stored array as `gguf.GGUFReader` gives it (any shape; its bytes are what count).
        qtype: the ggml type.
        shape: the logical shape, in torch order (GGUF's dims reversed).
        dtype: the result's dtype.
        name, where: the tensor name and file, for error messages.

    Raises:
        GGUFError: an unsupported type, or data of the wrong size.
    """
    qtype = Q(qtype)
    count = int(np.prod(shape, dtype=np.int64))
    if qtype in FLOAT_TYPES:
        flat = torch.from_numpy(np.asarray(data).reshape(-1).view(np.uint8)).view(FLOAT_TYPES[qtype])
        _check_size(flat.numel(), count, qtype, name, where)
        with _few_threads(count):
            return flat.reshape(shape).to(dtype)
    block = BLOCK_DEQUANTIZERS.get(qtype)
    if block is None:
        supported = ", ".join(t.name for t in SUPPORTED_TYPES)
        raise GGUFError(
            f"Tensor {name!r} in {where} is stored as {qtype.name}, which autolm cannot dequantize. "
            f"Supported types: {supported}. Re-quantize the model to one of these (e.g. with llama-quantize)."
        )
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = torch.from_numpy(np.asarray(data).reshape(-1).view(np.uint8))
    _check_size(raw.numel() // block_bytes * block_elems, count, qtype, name, where)
    blocks = raw.view(-1, block_bytes)
    with _few_threads(count):
        if blocks.shape[0] <= _CHUNK_BLOCKS:
            return block(blocks).reshape(shape).to(dtype)
        out = torch.empty(blocks.shape[0], block_elems, dtype=dtype)
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            stop = start + _CHUNK_BLOCKS
            out[start:stop] = block(blocks[start:stop])
    return out.reshape(shape)


def _check_size(got: int, want: int, qtype: GGMLQuantizationType, name: str, where: str) -> None:
    if got != want:
        raise GGUFError(
            f"Tensor {name!r} in {where} ({qtype.name}) holds {got} values but its shape needs {want}. "
            "The file is corrupt; download or convert it again."
        )
