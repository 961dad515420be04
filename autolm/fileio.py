"""Atomic writes: every file autolm writes goes to a unique temp name beside it, then is renamed into place.

A reader sees the old file or the new one, never part of one. Temp names start with "." and end in ".tmp"
(`.config.json.4242.9f3a0c1e.tmp`), so no loader picks one up; a write that is killed may leave one behind.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of the temp names this module makes."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_path(path: str | os.PathLike) -> Path:
    """A new, empty file beside `path` under a name no other writer uses (pid + random suffix)."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 less the umask, as a plain open() would create it (mkstemp would make it 0o600)
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return  # some platforms cannot open a directory; the rename is still atomic
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(directory: str | os.PathLike) -> None:
    """Make the renames and removals done in `directory` survive a power cut."""
    _fsync(Path(directory), directory=True)


class Staging:
    """Files that switch together: write each into `temp(final)`, then `commit()` renames them in order.

    All temps are flushed to disk before the first rename, so the renames follow each other with no I/O
    in between. Used as a context manager, what is still pending is committed when the block ends and
    removed when it raises (KeyboardInterrupt included).
    """

    def __init__(self) -> None:
        self._pending: dict[Path, Path] = {}  # final path -> temp path
        self._synced: set[Path] = set()

    def temp(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path in self._pending:
            return self._pending[path]
        self._pending[path] = tmp = temp_path(path)
        return tmp

    def sync(self) -> None:
        """Flush every pending temp to disk now, so that later renames need no I/O."""
        for tmp in self._pending.values():
            if tmp not in self._synced:
                _fsync(tmp)
                self._synced.add(tmp)

    def rename(self, path: str | os.PathLike) -> None:
        """Move one staged file into place (after `sync`); the folder is synced by a later `commit`."""
        tmp = self._pending.pop(Path(path))
        os.replace(tmp, path)
        self._synced.discard(tmp)

    def commit(self, *paths: str | os.PathLike) -> None:
        """Rename the given staged files (all pending ones when none is given) into place, in that order."""
        finals = [Path(p) for p in paths] if paths else list(self._pending)
        self.sync()
        for final in finals:
            self.rename(final)
        for directory in {final.parent for final in finals}:
            sync_folder(directory)

    def discard(self) -> None:
        for tmp in self._pending.values():
            tmp.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` to write into; it replaces `path` when the block succeeds."""
    with Staging() as staging:
        yield staging.temp(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


__all__ = [
    "Staging",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_temp_name",
    "sync_folder",
    "temp_path",
]
