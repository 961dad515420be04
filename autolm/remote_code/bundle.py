"""A repo's custom code as a bundle: which files, their hashes, the pin, the imports they need.

Nothing here executes repo code: files are fetched, hashed and parsed with `ast` only.

The bundle of a code repo is every Python file that the auto_map entries of config.json and
tokenizer_config.json name in that repo, plus every file those import relatively (recursively).
Its pin is the sha256 of the UTF-8 text made of one line per file, sorted by path:
`<relative path>\\0<sha256 of the file's bytes>\\n`. See `bundle_hash`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RemoteCodeError
from ..hub import LocalRepo, Repo, open_repo

logger = logging.getLogger("autolm")

CODE_CONFIG_FILES = ("config.json", "tokenizer_config.json")
# import name -> pip package, where they differ
_PIP_NAMES = {
    "PIL": "pillow",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "google.protobuf": "protobuf",
    "sentencepiece": "sentencepiece",
}


@dataclass
class CodeBundle:
    """The custom code one repo provides (or another repo names with `org/repo--module.Class`)."""

    repo_id: str  # the hub id, or the absolute path of a local directory: the key for pins
    revision: str | None  # commit sha for hub repos
    files: dict[str, Path]  # relative path -> local file
    sha256: dict[str, str]  # relative path -> sha256 of its bytes
    auto_map: dict[str, dict] = field(default_factory=dict)  # source file -> its auto_map, as written

    @property
    def pin(self) -> str:
        return bundle_hash(self.sha256)

    def listing(self) -> str:
        """One line per file: its sha256 and path (for error messages and prompts)."""
        return "\n".join(f"  {self.sha256[f]}  {f}" for f in sorted(self.files))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_hash(file_hashes: dict[str, str]) -> str:
    """The pin of a bundle: sha256 over sorted `path\\0sha256\\n` lines (paths relative, with `/`)."""
    text = "".join(f"{path}\0{file_hashes[path]}\n" for path in sorted(file_hashes))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def repo_key(repo: Repo) -> str:
    """How pins and the modules cache name a repo: its hub id, or the absolute path of a local directory."""
    return str(repo.path.resolve()) if isinstance(repo, LocalRepo) else repo.name


# --- auto_map references ---------------------------------------------------------------------------


def split_reference(reference: str) -> tuple[str | None, str, str]:
    """`"org/repo--module.Class"` -> ("org/repo", "module", "Class"); `"module.Class"` -> (None, ...)."""
    code_repo, _, local = reference.rpartition("--") if "--" in reference else (None, "", reference)
    module, dot, class_name = local.rpartition(".")
    if not dot or not module or not class_name:
        raise RemoteCodeError(
            f"auto_map entry {reference!r} is not of the form 'module.ClassName' or "
            "'org/repo--module.ClassName'. Fix the auto_map in the repo's config."
        )
    return code_repo or None, module, class_name


def references(auto_map: dict | None) -> list[str]:
    """Every class reference an auto_map holds (AutoTokenizer holds a [slow, fast] pair)."""
    out: list[str] = []
    for value in (auto_map or {}).values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and ref:
                out.append(ref)
    return out


def read_auto_maps(repo: Repo) -> dict[str, dict]:
    """{"config.json": auto_map, "tokenizer_config.json": auto_map} for the files that have one."""
    maps: dict[str, dict] = {}
    for name in CODE_CONFIG_FILES:
        path = repo.get_optional(name)
        if path is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the config's own loader reports a malformed file
        if isinstance(data, dict) and isinstance(data.get("auto_map"), dict):
            maps[name] = data["auto_map"]
    return maps


# --- collecting the files --------------------------------------------------------------------------


def module_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _relative_imports(tree: ast.Module, path: str) -> list[tuple[str, int]]:
    """(dotted target, line) of every `from .x import y` in the file, relative to the repo root.

    The line is negative where the target may legitimately be absent: `from . import name` (name may be
    an attribute of the package) and imports inside `try:` (optional code paths)."""
    package = path.split("/")[:-1]
    optional = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Try)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            sign = -1 if id(node) in optional else 1
            if node.module:
                out.append((".".join([*base, node.module]), sign * node.lineno))
            else:
                out.extend((".".join([*base, alias.name]), -node.lineno) for alias in node.names)
    return out


def _parse(path: Path, name: str) -> ast.Module:
    try:
        return ast.parse(path.read_bytes(), filename=name)
    except (SyntaxError, ValueError) as e:
        raise RemoteCodeError(
            f"{name} from the repo's custom code is not valid Python ({e}); it cannot be run."
        ) from None


def collect(repo: Repo, modules: list[str], auto_map: dict[str, dict] | None = None) -> CodeBundle:
    """Fetch `modules` and every file they import relatively, and hash them."""
    files: dict[str, Path] = {}
    todo = [(module_file(m), None) for m in modules]
    while todo:
        name, importer = todo.pop()
        if name in files:
            continue
        if not repo.exists(name):
            package_init = name.removesuffix(".py") + "/__init__.py"
            if repo.exists(package_init):
                name = package_init
            elif importer is None:
                raise RemoteCodeError(
                    f"The auto_map of {repo.name} names module {name.removesuffix('.py')!r}, but the repo has "
                    f"no {name}. Check the auto_map entry, or the revision."
                )
            elif importer[1] < 0:
                continue  # an attribute of the package, or an optional import that is absent
            else:
                raise RemoteCodeError(
                    f"{importer[0]} imports .{name.removesuffix('.py').replace('/', '.')} "
                    f"(line {importer[1]}), but {repo.name} has no {name}. The repo's code is incomplete."
                )
        path = repo.get(name)
        files[name] = path
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):  # a package's __init__.py runs before its modules
            init = "/".join(parts[:depth]) + "/__init__.py"
            if init not in files and repo.exists(init):
                todo.append((init, (name, 0)))
        for target, line in _relative_imports(_parse(path, name), name):
            todo.append((module_file(target), (name, line)))
    hashes = {name: sha256_file(path) for name, path in files.items()}
    return CodeBundle(repo_key(repo), repo.revision, files, hashes, dict(auto_map or {}))


def find_bundle(
    repo: Repo,
    code_repo: str | None = None,
    modules: list[str] | None = None,
    hub_kwargs: dict | None = None,
    code_revision: str | None = None,
) -> CodeBundle | None:
    """The bundle of `code_repo` (None: `repo` itself) that `repo`'s auto_maps (plus `modules`) name."""
    auto_maps = read_auto_maps(repo)
    wanted = list(modules or [])
    for ref in (r for m in auto_maps.values() for r in references(m)):
        ref_repo, module, _ = split_reference(ref)
        if (ref_repo if ref_repo != repo.name else None) == code_repo and module not in wanted:
            wanted.append(module)
    if not wanted:
        return None
    source = repo if code_repo is None else open_code_repo(code_repo, hub_kwargs, code_revision)
    return collect(source, wanted, auto_maps)


def find_bundles(
    repo: Repo, hub_kwargs: dict | None = None, code_revision: str | None = None
) -> list[CodeBundle]:
    """Every code bundle a repo's auto_maps name: its own first, then one per repo named with `--`."""
    code_repos: list[str | None] = []
    for ref in (r for m in read_auto_maps(repo).values() for r in references(m)):
        ref_repo = split_reference(ref)[0]
        ref_repo = None if ref_repo == repo.name else ref_repo
        if ref_repo not in code_repos:
            code_repos.append(ref_repo)
    code_repos.sort(key=lambda r: r or "")
    found = [find_bundle(repo, r, hub_kwargs=hub_kwargs, code_revision=code_revision) for r in code_repos]
    return [b for b in found if b is not None]


def open_code_repo(repo_id: str, hub_kwargs: dict | None, code_revision: str | None) -> Repo:
    """The repo an `org/repo--module.Class` reference names, at `code_revision` (default branch if None)."""
    kwargs = {k: v for k, v in (hub_kwargs or {}).items() if k not in ("revision", "subfolder")}
    return open_repo(repo_id, revision=code_revision, **kwargs)


# --- imports the code needs --------------------------------------------------------------------------


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Top-level names of absolute imports at module level (not in functions, try blocks or TYPE_CHECKING)."""
    names: list[str] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.append(node.module)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.ClassDef)):
                visit(node.body)
            # try blocks: optional imports guarded by `except ImportError`; functions: imported on use

    visit(tree.body)
    return names


def external_imports(bundle: CodeBundle, files: list[str] | None = None) -> list[str]:
    """Top-level packages the bundle's files import (absolute, module level, not stdlib, not its own files)."""
    own = {name.split("/")[0].removesuffix(".py") for name in bundle.files}
    found: list[str] = []
    for name in sorted(files if files is not None else bundle.files):
        for full in _module_level_imports(_parse(bundle.files[name], name)):
            top = full.split(".")[0]
            if top in sys.stdlib_module_names or top in own or top in found or top == "__future__":
                continue
            found.append(top)
    return found


def missing_packages(bundle: CodeBundle, files: list[str] | None = None) -> list[str]:
    """The imports of `external_imports` that are not installed (checked with find_spec, nothing imported)."""
    missing = []
    for top in external_imports(bundle, files):
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            missing.append(top)
    return missing


def pip_names(modules: list[str]) -> list[str]:
    return [_PIP_NAMES.get(m, m) for m in modules]


def closure(bundle: CodeBundle, module: str) -> list[str]:
    """The bundle files importing `module` runs: the file itself and its relative imports, recursively."""
    start = module_file(module)
    if start not in bundle.files:
        start = module.replace(".", "/") + "/__init__.py"
    seen: list[str] = []
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in bundle.files:
            continue
        seen.append(name)
        parts = name.split("/")[:-1]
        todo.extend("/".join(parts[:d]) + "/__init__.py" for d in range(1, len(parts) + 1))
        for target, _ in _relative_imports(_parse(bundle.files[name], name), name):
            todo.extend([module_file(target), target.replace(".", "/") + "/__init__.py"])
    return seen


def modules_cache() -> Path:
    """Where approved code is copied and imported from: AUTOLM_MODULES_CACHE, else $AUTOLM_HOME/modules,
    else ~/.cache/autolm/modules (XDG_CACHE_HOME respected)."""
    explicit = os.environ.get("AUTOLM_MODULES_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("AUTOLM_HOME")
    if home:
        return Path(home).expanduser() / "modules"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "autolm" / "modules"


def safe_name(repo_id: str) -> str:
    """A folder and identifier-friendly name for a repo id or path."""
    if os.path.isabs(repo_id):
        digest = hashlib.sha256(repo_id.encode()).hexdigest()[:8]
        repo_id = f"local--{Path(repo_id).name}-{digest}"
    return re.sub(r"[^A-Za-z0-9_]+", "_", repo_id.replace("/", "--")).strip("_") or "repo"


def cache_entry(repo_id: str, pin: str) -> Path:
    """`<modules cache>/<repo>/<pin>/`: one folder per repo and content hash."""
    return modules_cache() / safe_name(repo_id) / pin


RECORD_NAME = "bundle.json"  # in each cache entry: repo, revision and file hashes of the code there


def read_record(repo_id: str, pin: str) -> dict[str, str] | None:
    """The file hashes of the bundle cached under `pin`, when that version was loaded before."""
    try:
        data = json.loads((cache_entry(repo_id, pin) / RECORD_NAME).read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data["files"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        return None
