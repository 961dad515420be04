"""Opening a GGUF file: header, metadata and tensor table parsed here, checked before use.

The file is mapped (copy-on-write); tensors come back as numpy views of that mapping, so nothing is
read until a tensor is used. The layout is the one `gguf.GGUFReader` reads, parsed with bulk reads:
a vocabulary is ~10^5 strings, which the generic reader takes seconds to walk. The parsed metadata
of the last few files is kept (keyed by path, size and mtime), since a model and its tokenizer open
the same file one after the other.
"""

from __future__ import annotations

import logging
import math
import mmap
import struct
from collections import OrderedDict
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import GGUFError, ModelNotFoundError

logger = logging.getLogger("autolm")

_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
# GGUF value type -> numpy dtype (little-endian); strings and arrays are handled apart
_SCALARS = {
    0: np.dtype("<u1"),
    1: np.dtype("<i1"),
    2: np.dtype("<u2"),
    3: np.dtype("<i2"),
    4: np.dtype("<u4"),
    5: np.dtype("<i4"),
    6: np.dtype("<f4"),
    7: np.dtype("bool"),
    10: np.dtype("<u8"),
    11: np.dtype("<i8"),
    12: np.dtype("<f8"),
}
# ggml types whose data is a plain numpy array of that dtype (the rest are uint8 blocks)
_PLAIN_TYPES = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_MAX_DEPTH = 8  # arrays of arrays: real files nest one or two deep
_MAX_DIMS = 8  # ggml tensors have at most 4 dimensions
_CACHE_SIZE = 4


class _Cursor:
    """Reads GGUF values from a buffer, front to back."""

    def __init__(self, buffer: mmap.mmap, offset: int = 0) -> None:
        self.buffer = buffer
        self.offset = offset
        self.size = len(buffer)

    def take(self, n: int) -> int:
        """Advance by `n` bytes; return where they start. A truncated file fails here."""
        start = self.offset
        if n < 0 or start + n > self.size:
            raise ValueError(f"needs bytes up to {start + n} but the file has {self.size} (truncated)")
        self.offset = start + n
        return start

    def u32(self) -> int:
        return _U32.unpack_from(self.buffer, self.take(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.buffer, self.take(8))[0]

    def string(self) -> str:
        length = self.u64()
        start = self.take(length)
        return self.buffer[start : start + length].decode("utf-8")

    def strings(self, count: int) -> list[str]:
        # the hot loop of a vocabulary: locals only
        buffer, offset, size, unpack = self.buffer, self.offset, self.size, _U64.unpack_from
        out = []
        append = out.append
        for _ in range(count):
            if offset + 8 > size:
                break
            (length,) = unpack(buffer, offset)
            offset += 8
            if offset + length > size:
                break
            append(buffer[offset : offset + length].decode("utf-8"))
            offset += length
        else:
            self.offset = offset
            return out
        self.offset = offset
        raise ValueError(f"a string array runs past the end of the file at byte {offset} (truncated)")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            if depth >= _MAX_DEPTH:
                raise ValueError(f"arrays are nested more than {_MAX_DEPTH} deep")
            item_kind, count = self.u32(), self.u64()
            # each item takes at least a byte (an array's at least 12): a count the rest of the file
            # cannot hold is corrupt, and is refused before anything is allocated for it
            least = (
                12 if item_kind == _ARRAY else 8 if item_kind == _STRING else self._dtype(item_kind).itemsize
            )
            if count * least > self.size - self.offset:
                raise ValueError(
                    f"an array of {count} items at byte {self.offset} does not fit in the file (truncated)"
                )
            if item_kind == _STRING:
                return self.strings(count)
            if item_kind == _ARRAY:
                # gguf.GGUFWriter writes the items of a nested array without a type tag of their own
                return [self.value(_ARRAY, depth + 1) for _ in range(count)]
            dtype = self._dtype(item_kind)
            start = self.take(dtype.itemsize * count)
            return np.frombuffer(self.buffer, dtype, count, start).tolist()
        dtype = self._dtype(kind)
        return np.frombuffer(self.buffer, dtype, 1, self.take(dtype.itemsize)).tolist()[0]

    @staticmethod
    def _dtype(kind: int) -> np.dtype:
        dtype = _SCALARS.get(kind)
        if dtype is None:
            raise ValueError(f"unknown GGUF value type {kind}")
        return dtype


class GGUFTensor:
    """One tensor of a GGUF file: name, ggml type, GGUF-order dims, and its bytes as a numpy view.

    `data` has numpy's shape (GGUF dims reversed); block-quantized types give uint8 rows of blocks.
    """

    __slots__ = ("name", "tensor_type", "shape", "n_elements", "n_bytes", "data_offset", "_buffer")

    def __init__(self, name: str, tensor_type: GGMLQuantizationType, shape: np.ndarray, data_offset: int):
        self.name = name
        self.tensor_type = tensor_type
        self.shape = shape
        self.n_elements = math.prod(int(d) for d in shape.tolist())
        block_elems, block_bytes = GGML_QUANT_SIZES[tensor_type]
        self.n_bytes = self.n_elements * block_bytes // block_elems
        self.data_offset = data_offset
        self._buffer: mmap.mmap | None = None

    def __repr__(self) -> str:
        return f"GGUFTensor({self.name!r}, {self.tensor_type.name}, shape={self.shape.tolist()})"

    def release(self) -> None:
        """Let the OS drop this tensor's pages from memory (they are re-read from the file if used
        again). Called once a tensor is dequantized, so a load's peak memory holds no second copy
        of the file."""
        advise = getattr(self._buffer, "madvise", None)
        if advise is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        # whole pages inside this tensor only: a neighbour's bytes (maybe a view in use) stay put
        page = mmap.PAGESIZE
        start = -(-self.data_offset // page) * page
        end = (self.data_offset + self.n_bytes) // page * page
        if end > start:
            advise(mmap.MADV_DONTNEED, start, end - start)

    @property
    def data(self) -> np.ndarray:
        dims = tuple(int(d) for d in reversed(self.shape.tolist()))
        raw = np.frombuffer(self._buffer, np.uint8, self.n_bytes, self.data_offset)
        plain = _PLAIN_TYPES.get(self.tensor_type)
        if plain is not None:
            return raw.view(plain).reshape(dims)
        block_elems, block_bytes = GGML_QUANT_SIZES[self.tensor_type]
        return raw.reshape(*dims[:-1], dims[-1] // block_elems * block_bytes)


class _Parsed:
    """What parsing a file yields: metadata values, tensor table, where the tensor data starts."""

    def __init__(self, fields: dict[str, Any], tensors: list[tuple[str, int, tuple[int, ...], int]]):
        self.fields = fields
        self.tensors = tensors


_parsed_cache: OrderedDict[tuple, _Parsed] = OrderedDict()


def _parse(buffer: mmap.mmap) -> _Parsed:
    """Header, metadata and tensor table of a little-endian GGUF (version 2 or 3)."""
    cursor = _Cursor(buffer)
    if buffer[:4] != _MAGIC:
        raise ValueError(f"the file does not start with the GGUF magic (found {bytes(buffer[:4])!r})")
    cursor.take(4)
    version = cursor.u32()
    if version & 0xFFFF == 0 and version != 0:
        raise _BigEndian()
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_fields = cursor.u64(), cursor.u64()
    # a metadata entry takes at least 13 bytes and a tensor entry 24: larger counts cannot be true
    if n_fields * 13 + n_tensors * 24 > cursor.size:
        raise ValueError(f"the header counts {n_fields} metadata keys and {n_tensors} tensors (truncated)")
    fields: dict[str, Any] = {}
    for _ in range(n_fields):
        key = cursor.string()
        fields[key] = cursor.value(cursor.u32())
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.u32()
        if n_dims > _MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        start = cursor.take(8 * n_dims)
        dims = tuple(np.frombuffer(buffer, "<u8", n_dims, start).tolist())
        raw_kind = cursor.u32()
        try:
            kind = GGMLQuantizationType(raw_kind)
        except ValueError:
            raise ValueError(f"tensor {name!r} has the unknown ggml type {raw_kind}") from None
        if kind not in GGML_QUANT_SIZES:
            raise ValueError(f"tensor {name!r} has the ggml type {kind.name}, which has no known block size")
        block_elems = GGML_QUANT_SIZES[kind][0]
        if dims and dims[0] % block_elems:
            raise ValueError(
                f"tensor {name!r} has rows of {dims[0]} values, not whole {kind.name} blocks of {block_elems}"
            )
        infos.append((name, kind, dims, cursor.u64()))
    alignment = fields.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or not 0 < alignment <= 2**20:
        raise ValueError(f"general.alignment is {alignment!r}, not a positive integer")
    data_start = -(-cursor.offset // alignment) * alignment
    tensors = [(name, kind, dims, data_start + offset) for name, kind, dims, offset in infos]
    if len({name for name, *_ in tensors}) != len(tensors):
        raise ValueError("the tensor table names a tensor twice")
    return _Parsed(fields, tensors)


class _BigEndian(Exception):
    pass


def _is_kind(value: Any, kind: type, items: type | None = None) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if not isinstance(value, kind):
        return False
    return items is None or all(_is_kind(item, items) for item in value)


class GGUFFile:
    """An opened GGUF file: its metadata as Python values and its tensors as mapped arrays.

    Attributes:
        path: where the file lives.
        fields: metadata key -> value (str, int, float, bool or a list of those), in file order.
        architecture: `general.architecture` (e.g. "llama", "qwen2").
        tensors: tensor name -> `GGUFTensor`, in file order.
    """

    def __init__(self, path: Path, fields: dict[str, Any], tensors: dict[str, GGUFTensor]) -> None:
        self.path = path
        self.fields = fields
        self.tensors = tensors

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, architecture={self.architecture!r}, tensors={len(self.tensors)})"
        )

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default: Any = None, kind: type | None = None, items: type | None = None) -> Any:
        """The value of metadata `key` (str, int, float, bool or a list of those), or `default`.

        With `kind` (and `items` for a list's elements) the value is checked: a GGUFError naming the
        key and the file when it has another type. An int is accepted where a float is asked for.
        """
        value = self.fields.get(key)
        if value is None:
            return default
        if kind is not None and not _is_kind(value, kind, items):
            wanted = kind.__name__ + (f" of {items.__name__}" if items is not None else "")
            found = type(value).__name__ + (f" of {len(value)} items" if isinstance(value, list) else "")
            raise GGUFError(
                f"GGUF file {self.path}: metadata key {key!r} is a {found}, where a {wanted} is expected. "
                "The file is corrupt or from a converter autolm does not know; convert it again.",
                files=[self.path],
                key=key,
            )
        return value

    def require(self, key: str, kind: type | None = None, items: type | None = None) -> Any:
        """The value of metadata `key`; a GGUFError naming the key and the file when it is absent
        (or, with `kind`, of another type)."""
        value = self.get(key, kind=kind, items=items)
        if value is None:
            raise GGUFError(
                f"GGUF file {self.path} has no metadata key {key!r}, which autolm needs to load it. "
                "The file may come from an old or unusual converter; re-convert it with llama.cpp's "
                "convert_hf_to_gguf.py.",
                files=[self.path],
                key=key,
            )
        return value

    @property
    def architecture(self) -> str:
        return self.require("general.architecture", str)

    def keys(self) -> list[str]:
        return list(self.fields)


def read_gguf(path: str | PathLike[str] | GGUFFile) -> GGUFFile:
    """Open a GGUF file and check that every tensor lies inside it.

    Args:
        path: the `.gguf` file (an already opened `GGUFFile` is returned as is).

    Returns:
        The opened `GGUFFile`; tensor data stays on disk until used.

    Raises:
        ModelNotFoundError: no file at `path`.
        GGUFError: the file is not GGUF, is truncated or corrupt, or is big-endian.
    """
    if isinstance(path, GGUFFile):
        return path
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"No GGUF file at {path}. Check the path, or download the .gguf file first.")
    stat = path.stat()
    size = stat.st_size
    try:
        with open(path, "rb") as file:
            # copy-on-write: arrays come back writable (torch.from_numpy wants that) without touching the file
            buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as error:  # an empty file cannot be mapped
        raise GGUFError(
            f"Could not read {path} as GGUF ({size} bytes): {error}. The file is truncated or corrupt, "
            "or is not a GGUF file; download or convert it again."
        ) from error
    key = (str(path.resolve()), size, stat.st_mtime_ns)
    parsed = _parsed_cache.get(key)
    if parsed is None:
        try:
            parsed = _parse(buffer)
        except _BigEndian:
            raise GGUFError(
                f"{path} is a big-endian GGUF file; autolm reads little-endian GGUF only. "
                "Convert it with gguf-convert-endian (from the gguf package) first."
            ) from None
        except (ValueError, UnicodeDecodeError, struct.error, OverflowError) as error:
            raise GGUFError(
                f"Could not read {path} as GGUF ({size} bytes): {type(error).__name__}: {error}. "
                "The file is truncated or corrupt, or is not a GGUF file; download or convert it again."
            ) from error
        _parsed_cache[key] = parsed
        while len(_parsed_cache) > _CACHE_SIZE:
            _parsed_cache.popitem(last=False)
    else:
        _parsed_cache.move_to_end(key)
    tensors: dict[str, GGUFTensor] = {}
    for name, kind, dims, offset in parsed.tensors:
        tensor = GGUFTensor(name, kind, np.array(dims, dtype=np.uint64), offset)
        end = offset + tensor.n_bytes
        if end > size:
            raise GGUFError(
                f"GGUF file {path} is truncated: tensor {name!r} needs bytes up to {end}, "
                f"but the file has {size}. Download or convert it again."
            )
        tensor._buffer = buffer
        tensors[name] = tensor
    logger.debug("opened GGUF %s: %d tensors, %d metadata keys", path, len(tensors), len(parsed.fields))
    return GGUFFile(path, parsed.fields, tensors)
