"""Custom code shipped in model repos (`auto_map`), run only with consent, only as approved, offline too.

    load:    auto_map reference -> bundle (files + sha256, `bundle`) -> consent (pin, lock file, prompt,
             `consent`) -> modules cache + import as its own package (`loading`) -> class
    save:    save_pretrained copies the code beside the config and makes auto_map local (`export`)
    export:  a whole model directory with a MANIFEST; `verify` checks one

`trust_remote_code`: None (default: refuse, or ask on a terminal), False (refuse), True (run), a pin
(sha256 of the bundle, see `bundle_hash`) or a mapping file -> sha256. An `autolm.lock` can hold pins.
"""

from __future__ import annotations

from .bundle import CodeBundle, bundle_hash, find_bundle, find_bundles, modules_cache
from .consent import LOCK_NAME, find_lock_file, read_lock
from .export import MANIFEST_NAME, describe_remote_code, export, save_code, verify
from .loading import REMOTE_KWARGS, get_class, origin, pop_remote_kwargs, remote_reference

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "REMOTE_KWARGS",
    "CodeBundle",
    "bundle_hash",
    "describe_remote_code",
    "export",
    "find_bundle",
    "find_bundles",
    "find_lock_file",
    "get_class",
    "modules_cache",
    "origin",
    "pop_remote_kwargs",
    "read_lock",
    "remote_reference",
    "save_code",
    "verify",
]
