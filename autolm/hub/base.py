"""`Repo`: a model's files, wherever they live, and `LocalRepo`, a directory on disk."""

from __future__ import annotations

from pathlib import Path

from ..errors import MissingFilesError


class Repo:
    """A model's files. Subclasses: `LocalRepo` (a directory), `HubRepo` (Hugging Face Hub cache),
    `ModelScopeRepo` (ModelScope cache).

    Loaders use it the same way whatever the source:
    `repo.get_optional("config.json")`, `repo.exists("model.safetensors")`, `repo.fetch(shards)`.
    File names are relative to the repo root (or to `subfolder` when one was given).
    """

    name: str
    revision: str | None = None

    def exists(self, filename: str) -> bool:
        """Whether the repo holds `filename` (answered from the listing; downloads nothing)."""
        raise NotImplementedError

    def get(self, filename: str) -> Path:
        """Local path of `filename`, downloaded if needed; raises `MissingFilesError` when unavailable."""
        return self.fetch([filename])[0]

    def get_optional(self, filename: str) -> Path | None:
        """Like `get`, but None when the repo has no such file."""
        return self.get(filename) if self.exists(filename) else None

    def fetch(self, filenames: list[str]) -> list[Path]:
        """Local paths of several files at once (one progress bar for whatever must be downloaded)."""
        raise NotImplementedError

    def list_files(self) -> list[str]:
        raise NotImplementedError

    @property
    def local_dir(self) -> Path | None:
        """The directory holding the files, when there is one on disk."""
        return None

    def __repr__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{type(self).__name__}({self.name}{rev})"


class CachedRepo(Repo):
    """A remote repo resolved to one revision, its files in a cache snapshot folder.

    Subclasses set `storage`, `revision`, `settings`, `_subfolder`, `_forced` and write `_download`."""

    def _full(self, filename: str) -> str:
        return f"{self._subfolder}/{filename}" if self._subfolder else filename

    def _snapshot(self) -> Path:
        return self.storage / "snapshots" / self.revision

    @property
    def local_dir(self) -> Path:
        snap = self._snapshot()
        return snap / self._subfolder if self._subfolder else snap

    def fetch(self, filenames: list[str]) -> list[Path]:
        full = [self._full(f) for f in filenames]
        force = self.settings.force_download
        todo = [
            f
            for f in dict.fromkeys(full)
            if not (self._snapshot() / f).is_file() or (force and f not in self._forced)
        ]
        if todo:
            self._download(todo)
        return [self._snapshot() / f for f in full]

    def _download(self, todo: list[str]) -> None:
        raise NotImplementedError


class LocalRepo(Repo):
    """A directory on disk (a checkout, a `save_pretrained` output, or the folder of a single file)."""

    def __init__(self, path: Path, subfolder: str = "", single_file: str | None = None):
        self.root = Path(path)
        self.path = self.root / subfolder if subfolder else self.root
        self.name = str(path)
        # Set when the user passed a file (e.g. a .gguf) rather than a directory.
        self.single_file = single_file

    def exists(self, filename: str) -> bool:
        return (self.path / filename).is_file()

    def fetch(self, filenames: list[str]) -> list[Path]:
        missing = [f for f in filenames if not (self.path / f).is_file()]
        if missing:
            found = self.list_files()
            raise MissingFilesError(
                f"{self.path} has no {', '.join(missing)}. "
                f"Found: {', '.join(found[:30]) or 'nothing'}{' ...' if len(found) > 30 else ''}. "
                "Check the directory is a complete model checkout."
            )
        return [self.path / f for f in filenames]

    def list_files(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    @property
    def local_dir(self) -> Path:
        return self.path
