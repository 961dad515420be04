"""transformers' `logging` API for the "autolm" logger and autolm's progress bars.

`autolm.logging.set_verbosity_error()` etc. work as `transformers.logging`'s. The level may also come
from AUTOLM_VERBOSITY or TRANSFORMERS_VERBOSITY (debug, info, warning, error, critical), read when
autolm is imported. TRANSFORMERS_NO_ADVISORY_WARNINGS (or AUTOLM_NO_ADVISORY_WARNINGS) silences
`logger.warning_advice`. Unlike transformers, the logger keeps propagating to the root logger, so an
application's own logging setup (and pytest's caplog) sees autolm's records.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from logging import CRITICAL, DEBUG, ERROR, FATAL, INFO, NOTSET, WARN, WARNING  # noqa: F401 (re-exported)

LIBRARY = "autolm"
log_levels = {
    "detail": DEBUG,
    "debug": DEBUG,
    "info": INFO,
    "warning": WARNING,
    "error": ERROR,
    "critical": CRITICAL,
}
_VERBOSITY_VARS = ("AUTOLM_VERBOSITY", "TRANSFORMERS_VERBOSITY")
_ADVISORY_VARS = ("AUTOLM_NO_ADVISORY_WARNINGS", "TRANSFORMERS_NO_ADVISORY_WARNINGS")

_lock = threading.Lock()
_default_handler: logging.Handler | None = None
_configured = False


def _env_level() -> int | None:
    for var in _VERBOSITY_VARS:
        value = os.environ.get(var)
        if value:
            if value.lower() in log_levels:
                return log_levels[value.lower()]
            logging.getLogger(LIBRARY).warning(
                "Unknown option %s=%s; use one of %s.", var, value, ", ".join(log_levels)
            )
    return None


def _root() -> logging.Logger:
    return logging.getLogger(LIBRARY)


def _configure() -> None:
    """Once: the default stderr handler, and the level from the environment (else WARNING)."""
    global _configured, _default_handler
    with _lock:
        if _configured:
            return
        _configured = True
        root = _root()
        _default_handler = logging.StreamHandler()  # sys.stderr
        _default_handler.setFormatter(logging.Formatter(f"[{LIBRARY}] %(message)s"))
        root.addHandler(_default_handler)
        level = _env_level()
        root.setLevel(level if level is not None else WARNING)


def configure_from_env() -> None:
    """Called by `import autolm`: only when a verbosity variable is set (else nothing is touched)."""
    if any(os.environ.get(v) for v in _VERBOSITY_VARS):
        _configure()


def get_logger(name: str | None = None) -> logging.Logger:
    """A logger under "autolm" (the library's own logger when `name` is None)."""
    _configure()
    if name is None or name == LIBRARY:
        return _root()
    return logging.getLogger(name if name.startswith(f"{LIBRARY}.") else f"{LIBRARY}.{name}")


def get_log_levels_dict() -> dict[str, int]:
    return log_levels


def get_verbosity() -> int:
    _configure()
    return _root().getEffectiveLevel()


def set_verbosity(verbosity: int) -> None:
    _configure()
    _root().setLevel(verbosity)


def set_verbosity_debug() -> None:
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    set_verbosity(ERROR)


def disable_default_handler() -> None:
    _configure()
    if _default_handler is not None:
        _root().removeHandler(_default_handler)


def enable_default_handler() -> None:
    _configure()
    if _default_handler is not None and _default_handler not in _root().handlers:
        _root().addHandler(_default_handler)


def add_handler(handler: logging.Handler) -> None:
    _configure()
    _root().addHandler(handler)


def remove_handler(handler: logging.Handler) -> None:
    _configure()
    if handler in _root().handlers:
        _root().removeHandler(handler)


def disable_propagation() -> None:
    _configure()
    _root().propagate = False


def enable_propagation() -> None:
    _configure()
    _root().propagate = True


def enable_explicit_format() -> None:
    formatter = logging.Formatter("[%(levelname)s|%(filename)s:%(lineno)s] %(asctime)s >> %(message)s")
    for handler in get_logger().handlers:
        handler.setFormatter(formatter)


def reset_format() -> None:
    for handler in get_logger().handlers:
        handler.setFormatter(logging.Formatter(f"[{LIBRARY}] %(message)s"))


def captureWarnings(capture: bool) -> None:  # noqa: N802 (transformers' name)
    logging.captureWarnings(capture)


# --- once-only and advisory warnings -----------------------------------------------------------


@functools.lru_cache(None)
def _warning_once(logger: logging.Logger, message: str) -> None:
    logger.warning(message)


def warning_once(message: str, logger: logging.Logger | None = None) -> None:
    """Log `message` as a warning the first time only (the same text later is dropped)."""
    _warning_once(logger or _root(), message)


def warning_advice(message: str, *args, logger: logging.Logger | None = None) -> None:
    """A warning that TRANSFORMERS_NO_ADVISORY_WARNINGS=1 (or AUTOLM_NO_ADVISORY_WARNINGS=1) silences."""
    if any(os.environ.get(v) for v in _ADVISORY_VARS):
        return
    (logger or _root()).warning(message, *args)


# --- progress bars (autolm.hub.progress owns the switch) -----------------------------------------


def is_progress_bar_enabled() -> bool:
    from .hub.progress import bars_disabled

    return not bars_disabled()


def enable_progress_bar() -> None:
    from .hub.progress import enable_progress_bars

    enable_progress_bars()


def disable_progress_bar() -> None:
    from .hub.progress import disable_progress_bars

    disable_progress_bars()
