"""The Hugging Face cache on disk: list it, verify it, remove from it (`autolm cache ls|verify|rm`).

Blobs are named by their hash: a sha256 for LFS files, the git blob sha1 for the rest, so both can be
recomputed and compared; sizes are compared with the cached file listing (`trees/<sha>.json`) when present.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelNotFoundError, RevisionNotFoundError
from . import hub_settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class CachedRevision:
    commit: str
    refs: list[str]
    files: int
    size: int


@dataclass
class CachedRepo:
    repo_id: str
    path: Path
    size: int
    revisions: list[CachedRevision] = field(default_factory=list)


@dataclass
class Problem:
    kind: str  # "corrupt", "incomplete" or "dangling"
    repo_id: str
    path: Path
    detail: str


def default_cache_dir() -> Path:
    return hub_settings().cache_dir


def _repo_id(folder: Path) -> str:
    return folder.name.removeprefix("models--").replace("--", "/")


def _repo_folders(cache_dir: Path, repo_id: str | None = None) -> list[Path]:
    if repo_id is not None:
        folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
        return [folder] if folder.is_dir() else []
    return sorted(p for p in cache_dir.glob("models--*") if p.is_dir())


def scan(cache_dir: Path | None = None) -> list[CachedRepo]:
    """Every cached model repo with its revisions (commit, the refs pointing at it, file count, bytes)."""
    cache_dir = Path(cache_dir or default_cache_dir())
    repos = []
    for folder in _repo_folders(cache_dir):
        refs: dict[str, list[str]] = {}
        for ref in (folder / "refs").rglob("*"):
            if ref.is_file():
                refs.setdefault(ref.read_text().strip(), []).append(
                    ref.relative_to(folder / "refs").as_posix()
                )
        revisions = []
        for snap in sorted((folder / "snapshots").glob("*")):
            files = [p for p in snap.rglob("*") if p.is_file()]
            revisions.append(
                CachedRevision(
                    snap.name,
                    sorted(refs.get(snap.name, [])),
                    len(files),
                    sum(p.stat().st_size for p in files),
                )
            )
        size = sum(p.stat().st_size for p in (folder / "blobs").glob("*") if p.is_file())
        repos.append(CachedRepo(_repo_id(folder), folder, size, revisions))
    return repos


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(cache_dir: Path | None = None, repo_id: str | None = None) -> list[Problem]:
    """Recompute blob hashes, compare sizes with the cached listings, find dangling links and partial downloads."""
    cache_dir = Path(cache_dir or default_cache_dir())
    problems = []
    for folder in _repo_folders(cache_dir, repo_id):
        rid = _repo_id(folder)
        for blob in sorted((folder / "blobs").glob("*")):
            if blob.name.endswith(".incomplete"):
                problems.append(
                    Problem("incomplete", rid, blob, "a partial download (never used; safe to delete)")
                )
            elif _SHA256.match(blob.name) and _sha256(blob) != blob.name:
                problems.append(
                    Problem("corrupt", rid, blob, "sha256 of the content does not match the blob name")
                )
            elif _SHA1.match(blob.name) and _git_blob_sha1(blob) != blob.name:
                problems.append(
                    Problem("corrupt", rid, blob, "git sha1 of the content does not match the blob name")
                )
        for snap in sorted((folder / "snapshots").glob("*")):
            listing = _listing_sizes(folder, snap.name)
            for link in sorted(snap.rglob("*")):
                name = link.relative_to(snap).as_posix()
                if link.is_symlink() and not link.exists():
                    problems.append(Problem("dangling", rid, link, f"{name} points to a missing blob"))
                elif link.is_file() and name in listing and listing[name] != link.stat().st_size:
                    problems.append(
                        Problem(
                            "corrupt",
                            rid,
                            link,
                            f"{name} has {link.stat().st_size} bytes, the hub says {listing[name]}",
                        )
                    )
    return problems


def _listing_sizes(folder: Path, commit: str) -> dict[str, int]:
    from .hf import read_tree

    return {k: v for k, v in (read_tree(folder, commit) or {}).items() if v is not None}


def remove(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> int:
    """Delete a cached repo, or one revision of it (its snapshot, refs, and blobs no other revision uses).

    Returns the number of bytes freed. Raises ModelNotFoundError (a FileNotFoundError) when nothing matches.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    folders = _repo_folders(cache_dir, repo_id)
    if not folders:
        raise ModelNotFoundError(f"{repo_id} is not in the cache {cache_dir}. See `autolm cache ls`.")
    folder = folders[0]
    before = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    if revision is None:
        shutil.rmtree(folder)
        return before
    commit = revision
    ref = folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    if not snap.is_dir():
        cached = ", ".join(p.name for p in (folder / "snapshots").glob("*")) or "none"
        raise RevisionNotFoundError(
            f"{repo_id} has no cached revision {revision!r} (cached commits: {cached})."
        )
    shutil.rmtree(snap)
    for r in (folder / "refs").rglob("*"):
        if r.is_file() and r.read_text().strip() == commit:
            r.unlink()
    (folder / "trees" / f"{commit}.json").unlink(missing_ok=True)
    used = {Path(p).resolve().name for p in (folder / "snapshots").rglob("*") if p.is_symlink()}
    for blob in (folder / "blobs").glob("*"):
        if blob.name not in used:
            blob.unlink()
    after = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return before - after
