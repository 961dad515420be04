"""Name or path -> local files.

`open_repo` is the one resolver every loader goes through: it turns what the user passed
(a local directory, a local file, or a hub id `org/name`) into a `Repo` that hands out local paths.
Hub ids go to the Hugging Face Hub (`HubRepo`) or, when selected, to ModelScope (`ModelScopeRepo`);
both keep their client's standard cache, so files fetched by other tools are reused and the other way round.

Settings come from the arguments, then the environment, read at every call (not at import):
HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_TOKEN,
AUTOLM_HUB / USE_MODELSCOPE_HUB, MODELSCOPE_CACHE, MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import AutolmValueError, ModelNotFoundError
from .base import LocalRepo, Repo
from .progress import disable_progress_bars, enable_progress_bars

__all__ = [
    "HUB_KWARGS",
    "HubSettings",
    "LocalRepo",
    "Repo",
    "clear_resolved",
    "disable_progress_bars",
    "enable_progress_bars",
    "hub_settings",
    "open_repo",
    "pop_hub_kwargs",
]

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

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_TRUE = {"1", "true", "yes", "on"}


def pop_hub_kwargs(kwargs: dict) -> dict:
    """Remove and return the hub arguments from a from_pretrained **kwargs dict."""
    out = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if "use_auth_token" in out:
        token = out.pop("use_auth_token")
        out.setdefault("token", token)
    return out


@dataclass
class HubSettings:
    """Everything a hub load needs, resolved from arguments and the environment at call time."""

    source: str  # "hf" or "modelscope"
    revision: str | None
    cache_dir: Path
    endpoint: str
    token: str | bool | None
    offline: bool
    force_download: bool
    proxies: dict[str, str] | None
    subfolder: str


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _source(hub: str | None) -> str:
    choice = (hub or os.environ.get("AUTOLM_HUB") or "").strip().lower()
    if not choice and _env_true("USE_MODELSCOPE_HUB"):
        choice = "modelscope"
    if choice in ("", "hf", "huggingface", "hugging_face"):
        return "hf"
    if choice in ("modelscope", "ms"):
        return "modelscope"
    raise AutolmValueError(
        f"Unknown hub {choice!r}: use hub='huggingface' (the default) or hub='modelscope'."
    )


def hub_settings(
    *,
    hub: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    resume_download: bool | None = None,
    proxies: dict[str, str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    subfolder: str | None = None,
) -> HubSettings:
    """Resolve the hub arguments against the environment as it is now."""
    del resume_download  # accepted for compatibility: huggingface_hub always resumes within a download
    source = _source(hub)
    if source == "modelscope":
        default_cache = os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope"
        endpoint = os.environ.get("MODELSCOPE_ENDPOINT") or "https://www.modelscope.cn"
        env_token = os.environ.get("MODELSCOPE_API_TOKEN")
    else:
        hf_home = (
            os.environ.get("HF_HOME")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
        )
        default_cache = os.environ.get("HF_HUB_CACHE") or Path(hf_home) / "hub"
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        env_token = os.environ.get("HF_TOKEN")
    offline = bool(local_files_only) or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    return HubSettings(
        source=source,
        revision=revision,
        cache_dir=Path(cache_dir or default_cache).expanduser(),
        endpoint=endpoint.rstrip("/"),
        token=token if token is not None else env_token,
        offline=offline,
        force_download=bool(force_download),
        proxies=proxies or None,
        subfolder=(subfolder or "").strip("/"),
    )


def clear_resolved() -> None:
    """Forget branch -> commit resolutions remembered for the current load (see `hf.RESOLVE_TTL_S`)."""
    from .hf import clear_resolved as _clear

    _clear()


def open_repo(name_or_path: str | os.PathLike, **hub_kwargs) -> Repo:
    """Resolve a local directory, a local file or a hub id into a `Repo`.

    Args:
        name_or_path: a directory, a file (e.g. a .gguf), or a hub id such as `org/name`.
        **hub_kwargs: `revision`, `cache_dir`, `force_download`, `resume_download`, `proxies`, `token`
            (or `use_auth_token`), `local_files_only`, `subfolder`, `hub` ("huggingface" or "modelscope").

    Raises:
        ModelNotFoundError: no such path, and not a hub id, or no such repo on the hub.
        RevisionNotFoundError: the repo has no such branch, tag or commit.
        GatedRepoError: the repo needs a token, or the token has no access.
        HubUnreachableError: the hub could not be reached and the repo is not cached.
        MissingFilesError: offline, and the revision is not in the cache.
    """
    if "use_auth_token" in hub_kwargs:
        hub_kwargs = dict(hub_kwargs)
        hub_kwargs.setdefault("token", hub_kwargs.pop("use_auth_token"))
    path = Path(name_or_path).expanduser()
    subfolder = hub_kwargs.get("subfolder") or ""
    if path.is_dir():
        return LocalRepo(path, subfolder)
    if path.is_file():
        return LocalRepo(path.parent, single_file=path.name)
    name = str(name_or_path)
    if not _REPO_ID.match(name) or name.count("/") > 1:
        raise ModelNotFoundError(
            f"{name!r} is neither a local directory or file nor a hub id like 'org/name'. "
            "Pass the path of a directory holding config.json and the weights, or a hub id."
        )
    settings = hub_settings(**hub_kwargs)
    if settings.source == "modelscope":
        from .modelscope import ModelScopeRepo

        return ModelScopeRepo(name, settings)
    from .hf import HubRepo

    return HubRepo(name, settings)
