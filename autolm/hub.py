"""Name or path -> local files.

`open_repo` is the one resolver every loader goes through: it turns what the user passed
(a local directory, or a hub id) into a `Repo` that hands out local paths to the files a load needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingFilesError, ModelNotFoundError

# The download/cache arguments every from_pretrained accepts; `pop_hub_kwargs` takes them out of **kwargs.
HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "resume_download",
    "proxies",
    "token",
    "use_auth_token",
    "local_files_only",
    "revision",
    "subfolder",
    "hub",
)


def pop_hub_kwargs(kwargs: dict) -> dict:
    """Remove and return the hub arguments from a from_pretrained **kwargs dict."""
    out = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if "use_auth_token" in out:
        token = out.pop("use_auth_token")
        out.setdefault("token", token)
    return out


class Repo:
    """A model's files, wherever they live. Subclasses: `LocalRepo` (a directory)."""

    name: str
    revision: str | None = None

    def exists(self, filename: str) -> bool:
        raise NotImplementedError

    def get(self, filename: str) -> Path:
        """Local path of `filename`; raises `MissingFilesError` when the repo has no such file."""
        return self.fetch([filename])[0]

    def get_optional(self, filename: str) -> Path | None:
        return self.get(filename) if self.exists(filename) else None

    def fetch(self, filenames: list[str]) -> list[Path]:
        """Local paths of several files at once (one progress bar for a download)."""
        raise NotImplementedError

    def list_files(self) -> list[str]:
        raise NotImplementedError

    @property
    def local_dir(self) -> Path | None:
        """The directory holding the files, when there is one on disk."""
        return None


class LocalRepo(Repo):
    def __init__(self, path: Path, subfolder: str = ""):
        self.root = Path(path)
        self.path = self.root / subfolder if subfolder else self.root
        self.name = str(path)

    def exists(self, filename: str) -> bool:
        return (self.path / filename).is_file()

    def fetch(self, filenames: list[str]) -> list[Path]:
        missing = [f for f in filenames if not (self.path / f).is_file()]
        if missing:
            raise MissingFilesError(
                f"{self.path} has no {', '.join(missing)}. Found: {', '.join(self.list_files()) or 'nothing'}. "
                "Check the directory is a complete model checkout."
            )
        return [self.path / f for f in filenames]

    def list_files(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    @property
    def local_dir(self) -> Path:
        return self.path


def open_repo(name_or_path: str | os.PathLike, **hub_kwargs) -> Repo:
    """Resolve a local directory or a hub id into a `Repo`.

    Raises:
        ModelNotFoundError: the path does not exist and is not a hub id.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return LocalRepo(path, hub_kwargs.get("subfolder") or "")
    raise ModelNotFoundError(
        f"{str(name_or_path)!r} is not a local directory. Pass the path of a directory holding config.json "
        "and the weights."
    )
