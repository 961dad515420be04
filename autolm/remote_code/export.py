"""Offline bundles: save code along with what it built, export a whole model directory, verify it.

An exported directory holds the weights, configs, tokenizer files and the custom code, with every
auto_map entry rewritten to a local `module.ClassName`, and a `MANIFEST` (JSON):

    {"format": 1, "source": "org/name", "revision": "<sha>", "code_pin": "<pin>" | null,
     "files": {"config.json": {"sha256": "...", "size": 123}, ...}}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import RemoteCodeError
from ..fileio import atomic_path, atomic_write_text
from ..hub import LocalRepo, Repo, open_repo
from .bundle import (
    CODE_CONFIG_FILES,
    CodeBundle,
    external_imports,
    find_bundle,
    find_bundles,
    missing_packages,
    pip_names,
    read_auto_maps,
    references,
    sha256_file,
    split_reference,
)
from .loading import origin

MANIFEST_NAME = "MANIFEST"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf", ".ckpt")


def localize(auto_map: dict, code_repos: set[str]) -> dict:
    """`org/repo--module.Class` -> `module.Class` for the repos whose code sits beside the config."""

    def one(ref: Any) -> Any:
        if isinstance(ref, str) and "--" in ref and split_reference(ref)[0] in code_repos:
            return ref.rpartition("--")[2]
        return ref

    return {k: [one(r) for r in v] if isinstance(v, (list, tuple)) else one(v) for k, v in auto_map.items()}


def _copy_code(bundle: CodeBundle, directory: Path) -> None:
    for name, path in bundle.files.items():
        target = directory / name
        if target.exists() and sha256_file(target) != bundle.sha256[name]:
            raise RemoteCodeError(
                f"{target} already exists with other content than {name} of {bundle.repo_id}. "
                "Save into an empty directory."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)


def _rewrite_auto_map(path: Path, fallback: dict | None, code_repos: set[str]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    auto_map = data.get("auto_map") or fallback
    if not auto_map:
        return
    data["auto_map"] = localize(auto_map, code_repos)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_code(obj: Any, directory: str | os.PathLike, config_name: str = "config.json") -> None:
    """If `obj`'s class is remote code: copy its code files into `directory` and make `config_name`'s
    auto_map point at them, so the directory loads with no network. Called by the save_pretrained methods."""
    bundle = origin(type(obj))
    if bundle is None:
        return
    directory = Path(directory)
    _copy_code(bundle, directory)
    fallback = bundle.auto_map.get(config_name)
    if fallback is None and config_name == "tokenizer_config.json":
        tokenizer_ref = bundle.auto_map.get("config.json", {}).get("AutoTokenizer")
        fallback = {"AutoTokenizer": tokenizer_ref} if tokenizer_ref else None
    _rewrite_auto_map(directory / config_name, fallback, {bundle.repo_id})


def describe_remote_code(repo: Repo | str | os.PathLike, **hub_kwargs: Any) -> dict | None:
    """What custom code a repo holds, for `autolm inspect`; None when it has none. Runs nothing.

    Returns {"repo", "revision", "pin", "lock" (a line to paste into autolm.lock), "auto_map"
    ({file: auto_map}), "files" ([{"path", "sha256", "size"}]), "imports" (packages it needs),
    "missing" (those not installed, as pip names), "code_repos" (other repos it names with `--`)}.
    """
    if not isinstance(repo, Repo):
        repo = open_repo(repo, **hub_kwargs)
    auto_maps = read_auto_maps(repo)
    if not any(references(m) for m in auto_maps.values()):
        return None
    bundle = find_bundle(repo, None, hub_kwargs=hub_kwargs)
    others = sorted(
        {split_reference(r)[0] for m in auto_maps.values() for r in references(m)} - {None, repo.name}
    )
    out: dict[str, Any] = {
        "repo": repo.name,
        "revision": repo.revision,
        "auto_map": auto_maps,
        "code_repos": others,
    }
    if bundle is None:  # every reference points at other repos
        return {**out, "pin": None, "lock": None, "files": [], "imports": [], "missing": []}
    return {
        **out,
        "repo": bundle.repo_id,
        "pin": bundle.pin,
        "lock": f'"{bundle.repo_id}" = "{bundle.pin}"',
        "files": [
            {"path": name, "sha256": bundle.sha256[name], "size": bundle.files[name].stat().st_size}
            for name in sorted(bundle.files)
        ],
        "imports": external_imports(bundle),
        "missing": pip_names(missing_packages(bundle)),
    }


# --- export and verify -------------------------------------------------------------------------------


def _weight_files(repo: Repo) -> list[str]:
    from ..weights import BIN_INDEX, SAFE_INDEX, checkpoint_files

    paths = checkpoint_files(repo)
    names = [p.relative_to(repo.local_dir).as_posix() for p in paths]
    if len(names) > 1 or names[0] not in ("model.safetensors", "pytorch_model.bin"):
        names.append(SAFE_INDEX if names[0].endswith(".safetensors") else BIN_INDEX)
    return names


def export(name_or_path: str | os.PathLike, directory: str | os.PathLike, **hub_kwargs: Any) -> dict:
    """Copy a model (weights, configs, tokenizer, custom code) into `directory` with a MANIFEST.

    Runs none of the code: the files are copied, auto_map entries made local, and hashed.
    Returns the manifest.
    """
    repo = open_repo(name_or_path, **hub_kwargs)
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise RemoteCodeError(f"{directory} is not empty; export into a new or empty directory.")
    directory.mkdir(parents=True, exist_ok=True)
    weights = _weight_files(repo)
    rest = [
        f
        for f in repo.list_files()
        if not f.startswith(".")
        and "/." not in f
        and not f.endswith(_WEIGHT_SUFFIXES)
        and not f.endswith(".index.json")
        and f != MANIFEST_NAME
    ]
    names = list(dict.fromkeys([*rest, *weights]))
    for name, path in zip(names, repo.fetch(names)):
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    bundles = find_bundles(repo, hub_kwargs)
    for bundle in bundles:
        _copy_code(bundle, directory)
    code_repos = {b.repo_id for b in bundles} | {repo.name}
    for config_name in CODE_CONFIG_FILES:
        if (directory / config_name).is_file():
            _rewrite_auto_map(directory / config_name, None, code_repos)
    local = find_bundle(LocalRepo(directory))
    manifest = {
        "format": 1,
        "source": repo.name,
        "revision": repo.revision,
        "code_pin": local.pin if local else None,
        "files": _hash_tree(directory),
    }
    # written last: a directory with a MANIFEST holds every file it lists
    atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _hash_tree(directory: Path) -> dict[str, dict]:
    return {
        p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and "__pycache__" not in p.parts
    }


def verify(directory: str | os.PathLike) -> list[str]:
    """Check an exported directory against its MANIFEST; returns one line per difference (empty: intact)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
        expected: dict[str, dict] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{directory / MANIFEST_NAME}: missing or unreadable ({e}); export the model again"]
    actual = _hash_tree(directory)
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: missing")
        elif name not in expected:
            problems.append(f"{name}: not in the MANIFEST")
        elif actual[name]["size"] != expected[name].get("size"):
            problems.append(
                f"{name}: size {actual[name]['size']}, MANIFEST says {expected[name].get('size')}"
            )
        elif actual[name]["sha256"] != expected[name].get("sha256"):
            problems.append(
                f"{name}: sha256 {actual[name]['sha256']}, MANIFEST says {expected[name].get('sha256')}"
            )
    try:
        local = find_bundle(LocalRepo(directory))
    except RemoteCodeError as e:
        return [*problems, f"custom code: {e}"]
    pin = local.pin if local else None
    if pin != manifest.get("code_pin"):
        problems.append(f"custom code: pin {pin}, MANIFEST says {manifest.get('code_pin')}")
    return problems


__all__ = ["MANIFEST_NAME", "describe_remote_code", "export", "save_code", "verify"]
