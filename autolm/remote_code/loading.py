"""Approved code -> the modules cache -> a class, imported as a package of its own.

Each bundle is copied to `<modules cache>/<repo>/<pin>/` and imported under the package name
`autolm_remote_<repo>_<pin[:16]>`, so two repos' `modeling_x.py` never meet, nothing becomes importable
as a bare `modeling_x`, and no built-in autolm class is ever replaced.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from ..errors import RemoteCodeDependencyError, RemoteCodeError
from ..hub import open_repo
from .bundle import (
    RECORD_NAME,
    CodeBundle,
    cache_entry,
    closure,
    find_bundle,
    missing_packages,
    pip_names,
    safe_name,
    sha256_file,
    split_reference,
)
from .consent import Pin, consent

logger = logging.getLogger("autolm")

# class -> the bundle it was imported from (for save_pretrained and for consent given earlier in a load)
_ORIGINS: dict[type, CodeBundle] = {}

REMOTE_KWARGS = ("trust_remote_code", "prefer_remote_code", "lock_file", "code_revision")


def pop_remote_kwargs(kwargs: dict) -> dict:
    """Remove and return the remote-code arguments of a from_pretrained **kwargs dict."""
    return {k: kwargs.pop(k) for k in REMOTE_KWARGS if k in kwargs}


def origin(cls: type) -> CodeBundle | None:
    """The bundle `cls` was imported from, or None for a class that is not remote code."""
    return _ORIGINS.get(cls)


def pick(value: str | list | tuple | None) -> str | None:
    """An auto_map value: a reference, or AutoTokenizer's [slow, fast] pair (fast preferred)."""
    if isinstance(value, (list, tuple)):
        return next((v for v in reversed(value) if v), None)
    return value or None


def remote_reference(
    auto_map: Mapping | None,
    auto_class: str,
    native: bool,
    prefer_remote_code: bool = False,
    trust_remote_code: bool | Pin | None = None,
    source: str = "",
) -> str | None:
    """The auto_map reference to load for `auto_class`, or None to use autolm's own class."""
    reference = pick((auto_map or {}).get(auto_class)) if isinstance(auto_map, Mapping) else None
    if reference is None:
        return None
    if native and not prefer_remote_code:
        if trust_remote_code:
            logger.info(
                "%s: autolm supports this model natively; using its own %s class, not the repo's %s. "
                "Pass prefer_remote_code=True to run the repo's code instead.",
                source or "the repo",
                auto_class,
                reference,
            )
        return None
    return reference


def get_class(
    name_or_path: str | os.PathLike,
    reference: str,
    trust_remote_code: bool | Pin | None = None,
    *,
    lock_file: str | os.PathLike | None = None,
    hub_kwargs: dict | None = None,
    code_revision: str | None = None,
    approved: CodeBundle | None = None,
    auto_class: str | None = None,
) -> type:
    """Fetch, check and import the class an auto_map `reference` names in the repo `name_or_path`.

    `approved`: a bundle that already passed consent in this load (the config's); the same code is not
    asked about twice.

    Raises:
        RemoteCodeError: no consent; RemoteCodePinError: the code differs from the pin;
        RemoteCodeDependencyError: the code imports packages that are not installed.
    """
    hub_kwargs = dict(hub_kwargs or {})
    repo = open_repo(name_or_path, **hub_kwargs)
    code_repo, module, class_name = split_reference(reference)
    if code_repo == repo.name:
        code_repo = None
    bundle = find_bundle(repo, code_repo, [module], hub_kwargs, code_revision)
    if bundle is None:  # cannot happen: `module` was asked for
        raise RemoteCodeError(f"{repo.name}: no code found for {reference!r}.")
    same = approved is not None and (approved.repo_id, approved.pin) == (bundle.repo_id, bundle.pin)
    if not same:
        consent(bundle, trust_remote_code, lock_file)
    needed = closure(bundle, module)
    missing = missing_packages(bundle, needed)
    if missing:
        raise RemoteCodeDependencyError(
            f"The custom code of {bundle.repo_id} ({', '.join(needed)}) imports packages that are not "
            f"installed: {', '.join(missing)}. Nothing was run. Install them: pip install {' '.join(pip_names(missing))}"
        )
    cls = import_class(bundle, module, class_name)
    if auto_class and hasattr(cls, "register_for_auto_class"):
        # a transformers-based class: its own save_pretrained then copies the code and writes auto_map
        with contextlib.suppress(Exception):
            cls.register_for_auto_class(auto_class)
    return cls


def import_class(bundle: CodeBundle, module: str, class_name: str) -> type:
    """Copy the bundle into the modules cache (if not there intact), import `module`, return the class."""
    entry = install(bundle)
    package = package_name(bundle)
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package, entry / "__init__.py", submodule_search_locations=[str(entry)]
        )
        root = importlib.util.module_from_spec(spec)
        sys.modules[package] = root
        try:
            spec.loader.exec_module(root)
        except BaseException:
            sys.modules.pop(package, None)
            raise
    loaded = importlib.import_module(f"{package}.{module}")
    cls = getattr(loaded, class_name, None)
    if not isinstance(cls, type):
        raise RemoteCodeError(
            f"{bundle.repo_id}: {module.replace('.', '/')}.py defines no class {class_name!r} "
            f"(the auto_map names it). Check the auto_map entry, or the revision."
        )
    _ORIGINS[cls] = bundle
    return cls


def package_name(bundle: CodeBundle) -> str:
    return f"autolm_remote_{safe_name(bundle.repo_id)}_{bundle.pin[:16]}"


def install(bundle: CodeBundle) -> Path:
    """`<modules cache>/<repo>/<pin>/` holding exactly the approved files (rewritten if tampered with)."""
    entry = cache_entry(bundle.repo_id, bundle.pin)
    if _intact(entry, bundle):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = entry.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name, path in bundle.files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        # packages need an __init__.py; empty ones are added where the repo has none
        for folder in {staging, *(p.parent for p in staging.rglob("*.py"))}:
            (folder / "__init__.py").touch(exist_ok=True)
        record = {
            "repo": bundle.repo_id,
            "revision": bundle.revision,
            "pin": bundle.pin,
            "files": bundle.sha256,
        }
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        if not _intact(staging, bundle):
            raise RemoteCodeError(
                f"The code of {bundle.repo_id} changed while it was being copied to {entry}; load again."
            )
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(staging, entry)
        except OSError:  # another process installed it first
            if not _intact(entry, bundle):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def _intact(entry: Path, bundle: CodeBundle) -> bool:
    """Whether the cached copy holds every file of the bundle, byte for byte (re-hashed, not trusted)."""
    try:
        if not all(sha256_file(entry / name) == digest for name, digest in bundle.sha256.items()):
            return False
        added = (
            p for p in entry.rglob("__init__.py") if p.relative_to(entry).as_posix() not in bundle.sha256
        )
        return all(p.stat().st_size == 0 for p in added)
    except OSError:
        return False
