"""Whether a bundle may run: a pin (argument or autolm.lock), `trust_remote_code=True`, or a yes at the prompt.

Lock file (`autolm.lock`, JSON or TOML), one entry per code repo (hub id, or absolute path of a directory):

    "org/name" = "<pin>"                               # TOML; JSON: {"org/name": "<pin>"}
    ["org/other"]                                      # or per-file hashes (and optionally the pin)
    files = { "modeling_x.py" = "<sha256>", "helpers.py" = "<sha256>" }

Found at `lock_file=`, else $AUTOLM_LOCK, else next to the `__main__` script, else in the working directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from ..errors import AutolmValueError, RemoteCodeError, RemoteCodePinError
from .bundle import CodeBundle, read_record

logger = logging.getLogger("autolm")

LOCK_NAME = "autolm.lock"
PROMPT = "Do you wish to run the custom code? [y/N] "
DEFAULT_TIMEOUT_S = 15.0
_SHA256 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")

Pin = str | Mapping[str, str]


# --- lock files -----------------------------------------------------------------------------------


def find_lock_file(lock_file: str | os.PathLike | None = None) -> Path | None:
    """The lock file that applies: the argument, $AUTOLM_LOCK, beside the `__main__` script, or in cwd."""
    explicit = lock_file if lock_file is not None else os.environ.get("AUTOLM_LOCK")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise RemoteCodeError(
                f"Lock file {path} (from {'lock_file=' if lock_file is not None else 'AUTOLM_LOCK'}) does not "
                "exist. Create it, or point at an existing autolm.lock."
            )
        return path
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    candidates = [Path(main_file).resolve().parent / LOCK_NAME] if main_file else []
    candidates.append(Path.cwd() / LOCK_NAME)
    return next((p for p in candidates if p.is_file()), None)


def read_lock(path: Path) -> dict[str, Pin]:
    """repo id -> pin (a bundle sha256 string, or a mapping of file -> sha256)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else _toml(text)
    except ValueError as e:
        raise RemoteCodeError(
            f"{path} is neither valid JSON nor valid TOML ({e}). Fix the lock file."
        ) from None
    if not isinstance(data, dict):
        raise RemoteCodeError(f"{path} must map repo ids to pins; found a {type(data).__name__}.")
    pins: dict[str, Pin] = {}
    for repo_id, entry in data.items():
        if isinstance(entry, str):
            pins[repo_id] = entry
        elif isinstance(entry, Mapping) and isinstance(entry.get("files"), Mapping):
            pins[repo_id] = {**entry["files"], **({"": entry["sha256"]} if "sha256" in entry else {})}
        elif isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str):
            pins[repo_id] = entry["sha256"]
        else:
            raise RemoteCodeError(
                f"{path}: the entry for {repo_id!r} is neither a pin string nor a table with `sha256` or "
                "`files`. Paste the pin `autolm inspect` shows."
            )
    return pins


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise AutolmValueError(
                "reading TOML needs Python 3.11 or `pip install tomli`; or write JSON"
            ) from None
    return tomllib.loads(text)


def lock_pin(repo_id: str, lock_file: str | os.PathLike | None) -> tuple[Pin, Path] | None:
    path = find_lock_file(lock_file)
    if path is None:
        return None
    pin = read_lock(path).get(repo_id)
    return (pin, path) if pin is not None else None


# --- pins -----------------------------------------------------------------------------------------


def check_pin(bundle: CodeBundle, pin: Pin, where: str) -> None:
    """Raise `RemoteCodePinError` naming the files that differ, unless the bundle is exactly `pin`."""
    if isinstance(pin, Mapping):
        expected = {k: v for k, v in pin.items() if k}
        problems = _diff(expected, bundle.sha256)
        if "" in pin and not problems and pin[""].removeprefix("sha256:") != bundle.pin:
            problems = [f"bundle hash is {bundle.pin}, not {pin['']}"]
    else:
        if not isinstance(pin, str) or not _SHA256.match(pin):
            raise RemoteCodeError(
                f"{where} must be True, a sha256 pin (64 hex digits) or a mapping file -> sha256; got {pin!r}."
            )
        if pin.removeprefix("sha256:") == bundle.pin:
            return
        record = read_record(bundle.repo_id, pin.removeprefix("sha256:"))
        problems = _diff(record, bundle.sha256) if record else []
        if not problems:
            problems = [f"the code now hashes to {bundle.pin} (no record of which files the pin covered)"]
    if problems:
        raise RemoteCodePinError(
            f"The custom code of {bundle.repo_id}"
            f"{'@' + bundle.revision if bundle.revision else ''} does not match the pin from {where}: "
            f"{'; '.join(problems)}. Nothing was run. Read the changed code; if you trust it, update the pin "
            f"to {bundle.pin}. Files now:\n{bundle.listing()}"
        )


def _diff(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    out = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            out.append(f"{name} is pinned but no longer part of the code")
        elif name not in expected:
            out.append(f"{name} is new (not pinned)")
        elif expected[name] != actual[name]:
            out.append(f"{name} changed (sha256 {actual[name]}, pinned {expected[name]})")
    return out


# --- consent --------------------------------------------------------------------------------------


def consent(
    bundle: CodeBundle,
    trust_remote_code: bool | Pin | None,
    lock_file: str | os.PathLike | None = None,
) -> None:
    """Return if the bundle may run; raise `RemoteCodeError` (or `RemoteCodePinError`) if not.

    A pin (the argument, or the lock file's entry for the repo) is checked before anything else. Without
    one: True runs, False refuses, None asks on an interactive terminal and refuses elsewhere.
    """
    if trust_remote_code is not None and not isinstance(trust_remote_code, bool):
        check_pin(bundle, trust_remote_code, "trust_remote_code")
        return
    if trust_remote_code is not False:
        found = lock_pin(bundle.repo_id, lock_file)
        if found is not None:
            check_pin(bundle, found[0], str(found[1]))
            return
    if trust_remote_code is True:
        logger.info("Running custom code of %s (pin %s).", bundle.repo_id, bundle.pin)
        return
    if trust_remote_code is None and _interactive() and ask(bundle):
        return
    raise RemoteCodeError(refusal(bundle, trust_remote_code))


def refusal(bundle: CodeBundle, trust_remote_code: bool | None) -> str:
    where = Path(next(iter(bundle.files.values()))).parent if bundle.files else bundle.repo_id
    why = "trust_remote_code=False" if trust_remote_code is False else "trust_remote_code was not given"
    return (
        f"{bundle.repo_id} contains custom code, and {why}, so none of it was run. Files:\n"
        f"{bundle.listing()}\n"
        f"Read them (in {where}), then pass trust_remote_code=True, or pin exactly this code with "
        f'trust_remote_code="{bundle.pin}" (or the line `"{bundle.repo_id}" = "{bundle.pin}"` in {LOCK_NAME}).'
    )


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdout is not None and sys.stdin.isatty() and sys.stdout.isatty()
    except (ValueError, AttributeError):  # closed or replaced streams
        return False


def ask(bundle: CodeBundle, timeout: float | None = None) -> bool:
    """Ask on the terminal; no answer within the timeout ($AUTOLM_REMOTE_CODE_TIMEOUT, 15 s) means no."""
    if timeout is None:
        try:
            timeout = float(os.environ.get("AUTOLM_REMOTE_CODE_TIMEOUT", DEFAULT_TIMEOUT_S))
        except ValueError:
            timeout = DEFAULT_TIMEOUT_S
    # The one place the library writes to the terminal: the user is being asked a question.
    sys.stdout.write(
        f"{bundle.repo_id} contains custom code that would run on this machine:\n{bundle.listing()}\n"
        f"Pin: {bundle.pin}\n{PROMPT}"
    )
    sys.stdout.flush()
    answer = _read_line(timeout)
    if answer is None:
        sys.stdout.write(f"\nNo answer in {timeout:g} s: not running it.\n")
        sys.stdout.flush()
        return False
    return answer.strip().lower() in ("y", "yes")


def _read_line(timeout: float) -> str | None:
    if os.name == "posix":
        import select

        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        return sys.stdin.readline() if ready else None
    # Elsewhere select() takes only sockets: read in a daemon thread and stop waiting at the timeout.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(sys.stdin.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else None
