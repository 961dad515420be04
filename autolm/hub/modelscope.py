"""`ModelScopeRepo`: a repo on ModelScope, through its official client (`pip install modelscope-hub`).

Cache: the client's own, `<MODELSCOPE_CACHE>/models/org--name/snapshots/<revision>/...`.
The endpoint comes from MODELSCOPE_ENDPOINT, read at every call. One listing request per load,
none offline; the same offline rules and errors as the Hugging Face side.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from ..errors import (
    DiskFullError,
    GatedRepoError,
    HubUnreachableError,
    MissingFilesError,
    ModelNotFoundError,
    RevisionNotFoundError,
)
from . import HubSettings
from .base import CachedRepo
from .hf import _is_disk_full, download_command
from .progress import DownloadBar

logger = logging.getLogger("autolm")


def _client():
    try:
        import modelscope_hub
    except ImportError as e:
        raise ModuleNotFoundError(
            "Loading from ModelScope needs its client: pip install modelscope-hub "
            "(or pip install 'autolm[modelscope]')."
        ) from e
    return modelscope_hub


class ModelScopeRepo(CachedRepo):
    def __init__(self, repo_id: str, settings: HubSettings):
        self.name = repo_id
        self.settings = settings
        self.revision = settings.revision or "master"
        self.storage = Path(settings.cache_dir) / "models" / repo_id.replace("/", "--")
        self._subfolder = settings.subfolder
        self._files: dict[str, tuple[int, str | None]] = {}
        self._forced: set[str] = set()
        ms = _client()
        token = settings.token if isinstance(settings.token, str) else None
        self._api = ms.HubApi(endpoint=settings.endpoint, token=token)
        if settings.offline:
            self._from_cache("offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1)")
            return
        try:
            listing = self._api.list_repo_files(repo_id, "model", revision=self.revision)
        except Exception as e:
            if isinstance(e, ms.NetworkError):
                with contextlib.suppress(MissingFilesError):
                    self._from_cache(f"{settings.endpoint} could not be reached")
                    logger.warning(
                        "%s unreachable; using the cached %s@%s", settings.endpoint, repo_id, self.revision
                    )
                    return
            raise self._translate(e) from e
        self._files = {f.path: (f.size, f.sha256) for f in listing if f.type != "tree"}
        self._online = True

    _online = False

    def _from_cache(self, why: str) -> None:
        snap = self._snapshot()
        if not snap.is_dir():
            cached = (
                sorted(p.name for p in (self.storage / "snapshots").glob("*"))
                if self.storage.is_dir()
                else []
            )
            found = f"cached revisions: {', '.join(cached)}" if cached else "nothing cached for this repo"
            raise MissingFilesError(
                f"{self.name} at revision {self.revision!r} is not in the ModelScope cache "
                f"{self.settings.cache_dir} ({found}), and {why}. Fetch it once with "
                f"{download_command(self.name, self.settings.revision, 'modelscope')}, or go online."
            )

    def _translate(self, e: BaseException, files: list[str] | None = None) -> BaseException:
        ms = _client()
        if _is_disk_full(e):
            return DiskFullError(
                f"The disk holding {self.settings.cache_dir} is full while downloading {self.name} "
                f"({', '.join(files or [])}). Free some space or set MODELSCOPE_CACHE to a bigger disk."
            )
        if isinstance(e, ms.NetworkError):
            return HubUnreachableError(
                f"Could not reach {self.settings.endpoint} for {self.name}@{self.revision} ({e}), and it is not "
                "cached. Check your network or MODELSCOPE_ENDPOINT; to load only from the cache set "
                "HF_HUB_OFFLINE=1 or pass local_files_only=True."
            )
        if isinstance(e, ms.AuthenticationError | ms.PermissionDeniedError):
            return GatedRepoError(
                f"{self.name} on ModelScope needs a token with access: pass token=... or set MODELSCOPE_API_TOKEN."
            )
        if isinstance(e, ms.NotExistError | ms.NotFoundError):
            if "revision" in str(e).lower() and self.settings.revision:
                return RevisionNotFoundError(
                    f"{self.name} on ModelScope has no revision {self.revision!r} ({e}). Check the branch or tag."
                )
            return ModelNotFoundError(
                f"{self.name!r} is not a local directory and ModelScope ({self.settings.endpoint}) has no such "
                f"model at revision {self.revision!r} ({e}). Check the id (org/name) and the revision."
            )
        return e

    def exists(self, filename: str) -> bool:
        full = self._full(filename)
        return full in self._files or (self._snapshot() / full).is_file()

    def list_files(self) -> list[str]:
        snap = self._snapshot()
        names = set(self._files)
        if snap.is_dir():
            names |= {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
        prefix = f"{self._subfolder}/" if self._subfolder else ""
        return sorted(n[len(prefix) :] for n in names if n.startswith(prefix) and "/.lock" not in n)

    def _download(self, todo: list[str]) -> None:
        if not self._online:
            raise MissingFilesError(
                f"{self.name} at revision {self.revision!r} lacks {len(todo)} file(s) in the ModelScope cache "
                f"{self.settings.cache_dir}: {', '.join(todo)}. Offline mode is on (local_files_only=True or "
                f"HF_HUB_OFFLINE=1). Fetch them once with "
                f"{download_command(self.name, self.settings.revision, 'modelscope')}, or go online."
            )
        absent = [f for f in todo if f not in self._files]
        if absent:
            raise MissingFilesError(
                f"{self.name} at revision {self.revision!r} on ModelScope has no {', '.join(absent)}. "
                f"It holds: {', '.join(self.list_files()[:40]) or 'nothing'}."
            )
        ms = _client()
        total = sum(self._files[f][0] for f in todo)
        with DownloadBar(f"Downloading {self.name}", total) as bar:
            parent = bar

            class _Progress(ms.ProgressCallback):
                def update(self, size: int) -> None:
                    parent.update(size)

            try:
                for f in todo:
                    size, sha256 = self._files[f]
                    self._api.downloader.download_file(
                        self.name,
                        "model",
                        f,
                        revision=self.revision,
                        cache_dir=Path(self.settings.cache_dir),
                        force=self.settings.force_download,
                        expected_sha256=sha256,
                        file_size=size or None,
                        progress_callbacks=[_Progress],
                    )
            except Exception as e:
                raise self._translate(e, todo) from e
        self._forced.update(todo)
