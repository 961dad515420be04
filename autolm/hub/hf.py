"""`HubRepo`: a repo on the Hugging Face Hub (or a mirror at HF_ENDPOINT), kept in huggingface_hub's cache.

Cache layout (shared with transformers, `hf download` and huggingface_hub):
`<cache>/models--org--name/{blobs,snapshots/<sha>,refs/<branch>,trees/<sha>.json}`.

Requests per load:
- revision is a commit sha whose file listing is cached: none;
- revision is a branch or tag: one (`/api/models/org/name/revision/<ref>` gives the sha and file names),
  remembered for `RESOLVE_TTL_S` so the config, tokenizer and weights of one load share it;
- offline (`local_files_only=True`, HF_HUB_OFFLINE=1): none, ever;
- files not cached yet: one metadata and one download request each (done by huggingface_hub).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import (
    DiskFullError,
    GatedRepoError,
    HubUnreachableError,
    MissingFilesError,
    ModelNotFoundError,
    RevisionNotFoundError,
)
from ..fileio import atomic_write_text
from . import HubSettings
from .base import CachedRepo
from .progress import DownloadBar

logger = logging.getLogger("autolm")

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
RESOLVE_TTL_S = 30.0  # how long a branch -> commit answer is reused across the open_repo calls of one load
DOWNLOAD_THREADS = 4

# (endpoint, cache, repo, revision) -> (time, commit, files); see RESOLVE_TTL_S
_resolved: dict[tuple, tuple[float, str, dict[str, int | None]]] = {}
_proxy_lock = threading.Lock()


def clear_resolved() -> None:
    _resolved.clear()


def storage_folder(cache_dir: Path, repo_id: str) -> Path:
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def download_command(repo_id: str, revision: str | None, source: str = "hf") -> str:
    rev = f" --revision {revision}" if revision else ""
    if source == "modelscope":
        return f"`autolm download {repo_id}{rev} --hub modelscope`"
    return f"`autolm download {repo_id}{rev}` (or `hf download {repo_id}{rev}`)"


# --- the cached file listing (same file huggingface_hub >= 2 writes in snapshot_download) ------------


def read_tree(storage: Path, commit: str) -> dict[str, int | None] | None:
    """path -> size from `trees/<commit>.json`, or None when that listing is not cached."""
    try:
        data = json.loads((storage / "trees" / f"{commit}.json").read_text())
        if data.get("format_version") != 1:
            return None
        return {path: info.get("lfs_size") or info.get("size") for path, info in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_tree(storage: Path, commit: str, entries: list) -> None:
    files = {}
    for f in entries:
        if not hasattr(f, "blob_id"):  # a folder
            continue
        info: dict = {"size": f.size, "blob_id": f.blob_id}
        if f.lfs is not None:
            info["lfs_sha256"] = f.lfs.sha256
            info["lfs_size"] = f.lfs.size
        if getattr(f, "xet_hash", None):
            info["xet_hash"] = f.xet_hash
        files[f.path] = info
    _atomic_write(
        storage / "trees" / f"{commit}.json",
        json.dumps({"format_version": 1, "files": dict(sorted(files.items()))}, indent=1),
    )


def _write_ref(storage: Path, ref: str, commit: str) -> None:
    path = storage / "refs" / ref
    with contextlib.suppress(OSError):
        if path.read_text() == commit:
            return
    _atomic_write(path, commit)


def _atomic_write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(
                f"No space left writing {path}. Free some disk space, or set HF_HUB_CACHE."
            ) from e
        logger.warning("could not write %s: %s", path, e)


# --- per-call proxies --------------------------------------------------------------------------------


@contextlib.contextmanager
def proxied(proxies: dict[str, str] | None) -> Iterator[None]:
    """Route huggingface_hub's requests through `proxies` ({"http": url, "https": url}) for this block only.

    huggingface_hub shares one HTTP client, so the client is swapped for the block and put back after;
    proxied downloads are serialized to keep other calls off the proxy.
    """
    if not proxies:
        yield
        return
    import httpx2
    from huggingface_hub.utils import _http

    mounts = {}
    for scheme, url in proxies.items():
        key = scheme if "://" in scheme else f"{scheme}://"
        mounts[key] = httpx2.HTTPTransport(proxy=url)

    def factory() -> httpx2.Client:
        return httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
            mounts=mounts,
        )

    with _proxy_lock:
        previous = _http._GLOBAL_CLIENT_FACTORY
        _http.set_client_factory(factory)
        try:
            yield
        finally:
            _http.set_client_factory(previous)


# --- errors --------------------------------------------------------------------------------------------


def _is_disk_full(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


def _is_unreachable(e: BaseException | None) -> bool:
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    while e is not None:
        if isinstance(e, httpx2.TransportError | OfflineModeIsEnabled | ConnectionError):
            return True
        e = e.__cause__ or e.__context__
    return False


class HubRepo(CachedRepo):
    """A Hugging Face Hub repo, resolved to one commit, its files served from the shared cache."""

    def __init__(self, repo_id: str, settings: HubSettings):
        self.name = repo_id
        self.settings = settings
        self.storage = storage_folder(settings.cache_dir, repo_id)
        self.requested = settings.revision or "main"
        self._subfolder = settings.subfolder
        self._forced: set[str] = set()  # force_download applies once per file per Repo
        self._listing_complete = False
        self._files: dict[str, int | None] = {}
        self.revision = self._resolve()

    # --- resolving the revision ---

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.settings.endpoint, token=self.settings.token, library_name="autolm")

    def _memo_key(self) -> tuple:
        return (self.settings.endpoint, str(self.settings.cache_dir), self.name, self.requested)

    def _resolve(self) -> str:
        s = self.settings
        if s.offline:
            return self._resolve_from_cache("offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1)")
        if COMMIT_SHA.match(self.requested) and not s.force_download:
            files = read_tree(self.storage, self.requested)
            if files is not None:
                self._set_listing(files, complete=True)
                return self.requested
            snap = self.storage / "snapshots" / self.requested
            if snap.is_dir():  # filled by another tool: list it lazily, only if a file is not there
                self._set_listing(
                    {p.relative_to(snap).as_posix(): None for p in snap.rglob("*") if p.is_file()}, False
                )
                return self.requested
        memo = _resolved.get(self._memo_key())
        if memo is not None and time.monotonic() - memo[0] < RESOLVE_TTL_S and not s.force_download:
            _, commit, files = memo
            self._set_listing(files, complete=True)
            return commit
        try:
            with proxied(s.proxies):
                if COMMIT_SHA.match(self.requested):
                    commit = self.requested
                    self._list_tree(commit)
                else:
                    commit = self._resolve_ref()
        except Exception as e:
            if _is_unreachable(e):
                try:
                    commit = self._resolve_from_cache(f"{s.endpoint} could not be reached ({e})")
                except MissingFilesError:
                    raise self._unreachable(e) from e
                logger.warning("%s unreachable; using the cached %s@%s", s.endpoint, self.name, commit)
                return commit
            raise self._translate(e) from e
        _resolved[self._memo_key()] = (time.monotonic(), commit, dict(self._files))
        return commit

    def _resolve_ref_cheaply(self) -> str | None:
        """Warm cache: one HEAD of a file this branch had gives its current commit, far cheaper for the
        server than the repo-info call. None when that commit is not cached (then the full call runs)."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        try:
            previous = (self.storage / "refs" / self.requested).read_text().strip()
        except OSError:
            return None
        files = read_tree(self.storage, previous)
        if not files:
            return None
        probe = "config.json" if "config.json" in files else next(iter(files))
        url = hf_hub_url(self.name, probe, revision=self.requested, endpoint=self.settings.endpoint)
        try:
            commit = get_hf_file_metadata(url, token=self.settings.token, library_name="autolm").commit_hash
        except Exception as e:
            if _is_unreachable(e):
                raise
            return None  # e.g. the file is gone in the new commit: let the full call explain
        files = read_tree(self.storage, commit) if commit else None
        if files is None:
            return None
        if commit != previous:
            _write_ref(self.storage, self.requested, commit)
        self._set_listing(files, complete=True)
        return commit

    def _resolve_ref(self) -> str:
        from huggingface_hub.errors import GatedRepoError as HfGated
        from huggingface_hub.errors import RepositoryNotFoundError

        commit = self._resolve_ref_cheaply()
        if commit is not None:
            return commit
        api = self._api()
        try:
            info = api.repo_info(self.name, revision=self.requested)
        except RepositoryNotFoundError as e:
            if isinstance(e, HfGated):
                raise
            # Some mirrors (olah) answer an unknown branch with "repo not found": ask about the repo itself.
            try:
                api.list_repo_refs(self.name)
            except Exception:
                raise e from None
            raise self._revision_missing() from e
        commit = info.sha
        _write_ref(self.storage, self.requested, commit)
        files = read_tree(self.storage, commit)
        if files is not None:
            self._set_listing(files, complete=True)
        else:
            self._set_listing(
                {s.rfilename: None for s in info.siblings or []}, complete=info.siblings is not None
            )
        return commit

    def _list_tree(self, commit: str) -> None:
        """One listing call (file names and sizes), cached as `trees/<commit>.json`."""
        from huggingface_hub.errors import RemoteEntryNotFoundError

        try:
            entries = list(self._api().list_repo_tree(self.name, revision=commit, recursive=True))
        except RemoteEntryNotFoundError as e:  # the commit is not in the repo
            raise self._revision_missing() from e
        _write_tree(self.storage, commit, entries)
        self._set_listing(
            {f.path: (f.lfs.size if f.lfs else f.size) for f in entries if hasattr(f, "blob_id")}, True
        )

    def _resolve_from_cache(self, why: str) -> str:
        commit = self.requested if COMMIT_SHA.match(self.requested) else None
        if commit is None:
            with contextlib.suppress(OSError):
                commit = (self.storage / "refs" / self.requested).read_text().strip()
        if not commit or not (self.storage / "snapshots" / commit).is_dir():
            cached = (
                sorted(p.name for p in (self.storage / "refs").glob("*")) if self.storage.is_dir() else []
            )
            found = f"cached revisions: {', '.join(cached)}" if cached else "nothing cached for this repo"
            raise MissingFilesError(
                f"{self.name} at revision {self.requested!r} is not in the cache {self.settings.cache_dir} "
                f"({found}), and {why}. Fetch it once with {download_command(self.name, self.settings.revision)}, "
                "or go online."
            )
        files = read_tree(self.storage, commit)
        if files is not None:
            self._set_listing(files, complete=True)
        else:
            snap = self.storage / "snapshots" / commit
            present = {p.relative_to(snap).as_posix(): None for p in snap.rglob("*") if p.is_file()}
            self._set_listing(present, complete=False)
        return commit

    def _set_listing(self, files: dict[str, int | None], complete: bool) -> None:
        self._files = dict(files)
        self._listing_complete = complete

    # --- errors ---

    def _revision_missing(self) -> RevisionNotFoundError:
        return RevisionNotFoundError(
            f"{self.name} has no branch, tag or commit {self.requested!r} on {self.settings.endpoint}. "
            "Check the spelling, or pass revision='main'."
        )

    def _unreachable(self, e: BaseException) -> HubUnreachableError:
        return HubUnreachableError(
            f"Could not reach {self.settings.endpoint} for {self.name}@{self.requested} ({e}), and the files "
            "needed are not in the cache. Check your network or HF_ENDPOINT; to load only from the cache set "
            "HF_HUB_OFFLINE=1 or pass local_files_only=True."
        )

    def _translate(self, e: BaseException, files: list[str] | None = None) -> BaseException:
        from huggingface_hub import errors as hf

        if isinstance(
            e, ModelNotFoundError | RevisionNotFoundError | MissingFilesError | HubUnreachableError
        ):
            return e
        if isinstance(e, DiskFullError) or _is_disk_full(e):
            return DiskFullError(
                f"The disk holding {self.settings.cache_dir} is full while downloading {self.name} "
                f"({', '.join(files or [])}). Free some space or point HF_HUB_CACHE / cache_dir at a bigger disk."
            )
        if isinstance(e, hf.GatedRepoError) or (
            isinstance(e, hf.HfHubHTTPError) and getattr(e.response, "status_code", None) == 403
        ):
            return GatedRepoError(
                f"{self.name} is gated or private and this token has no access. Accept its terms on the hub page, "
                "then pass token=... or set HF_TOKEN (or run `hf auth login`)."
            )
        if isinstance(e, hf.RepositoryNotFoundError):
            token_hint = "" if self.settings.token else " If it is private, pass token=... or set HF_TOKEN."
            return ModelNotFoundError(
                f"{self.name!r} is not a local directory and no repo of that name exists on "
                f"{self.settings.endpoint}.{token_hint} Check the spelling (org/name)."
            )
        if isinstance(e, hf.RevisionNotFoundError):
            return self._revision_missing()
        if _is_unreachable(e):
            return self._unreachable(e)
        return e

    # --- files ---

    def _known_absent(self, full: str) -> bool:
        return (self.storage / ".no_exist" / self.revision / full).exists()

    def _has(self, full: str) -> bool:
        if full in self._files or (self._snapshot() / full).is_file():
            return True
        if self._listing_complete or self._known_absent(full) or self.settings.offline:
            return False
        try:
            with proxied(self.settings.proxies):
                self._list_tree(self.revision)
        except Exception as e:
            raise self._translate(e) from e
        return full in self._files

    def exists(self, filename: str) -> bool:
        return self._has(self._full(filename))

    def list_files(self) -> list[str]:
        if not self._listing_complete and not self.settings.offline:
            self._has("\0")  # forces the listing call
        prefix = f"{self._subfolder}/" if self._subfolder else ""
        names = set(self._files)
        snap = self._snapshot()
        if snap.is_dir():
            names |= {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
        return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))

    def _download(self, todo: list[str]) -> None:
        s = self.settings
        if s.offline:
            raise MissingFilesError(
                f"{self.name} at revision {self.requested!r} (commit {self.revision}) lacks "
                f"{len(todo)} file(s) in the cache {self.settings.cache_dir}: {', '.join(todo)}. Offline mode is on "
                f"(local_files_only=True or HF_HUB_OFFLINE=1). Fetch them once with "
                f"{download_command(self.name, s.revision)}, or go online."
            )
        absent = [f for f in todo if not self._has(f)]
        if absent:
            shown = [n for n in self.list_files()][:40]
            raise MissingFilesError(
                f"{self.name} at revision {self.requested!r} has no {', '.join(absent)}. "
                f"It holds: {', '.join(shown) or 'nothing'}. Check the file names, revision and subfolder."
            )
        if read_tree(self.storage, self.revision) is None:
            # Downloading anyway: one more call caches the listing, so later loads by sha need none.
            try:
                with proxied(s.proxies):
                    self._list_tree(self.revision)
            except Exception as e:
                raise self._translate(e, todo) from e
        sizes = [self._files.get(f) for f in todo]
        sized = all(n is not None for n in sizes)
        with DownloadBar(f"Downloading {self.name}", sum(sizes) if sized else None) as bar:
            bar_class = bar.file_bar_class(sized)
            try:
                with proxied(s.proxies):
                    if len(todo) == 1:
                        self._download_one(todo[0], bar_class)
                    else:
                        with ThreadPoolExecutor(min(DOWNLOAD_THREADS, len(todo))) as pool:
                            list(pool.map(lambda f: self._download_one(f, bar_class), todo))
            except Exception as e:
                raise self._translate(e, todo) from e
        self._forced.update(todo)

    def _download_one(self, filename: str, bar_class: type) -> None:
        from huggingface_hub import hf_hub_download

        logger.info("downloading %s/%s@%s", self.name, filename, self.revision[:8])
        hf_hub_download(
            self.name,
            filename,
            revision=self.revision,  # a sha: cached files never cost a request
            cache_dir=self.settings.cache_dir,
            endpoint=self.settings.endpoint,
            token=self.settings.token,
            force_download=self.settings.force_download,
            tqdm_class=bar_class,
            library_name="autolm",
        )
