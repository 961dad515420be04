"""One progress bar per model download, fed by the per-file bars of the hub clients."""

from __future__ import annotations

import os
import threading

from tqdm.auto import tqdm

_enabled = True


def disable_progress_bars() -> None:
    """Switch autolm's download bars off (also: AUTOLM_DISABLE_PROGRESS_BARS=1 or HF_HUB_DISABLE_PROGRESS_BARS=1)."""
    global _enabled
    _enabled = False


def enable_progress_bars() -> None:
    global _enabled
    _enabled = True


def bars_disabled() -> bool | None:
    """True when switched off; None lets tqdm decide (no bar when stderr is not a terminal)."""
    off = ("AUTOLM_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
    if not _enabled or any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in off):
        return True
    return None


class DownloadBar:
    """The model-wide bar. `file_bar_class()` gives a tqdm stand-in that the clients create per file."""

    def __init__(self, desc: str, total: int | None):
        self.bar = tqdm(desc=desc, total=total or None, unit="B", unit_scale=True, disable=bars_disabled())
        self._lock = threading.Lock()

    def grow(self, n: int) -> None:
        with self._lock:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def update(self, n: int) -> None:
        with self._lock:
            self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file_bar_class(self, sized: bool) -> type:
        """A class huggingface_hub instantiates per file (`tqdm_class=`); it only forwards byte counts.

        `sized`: the file sizes were already counted in the total, so per-file totals are ignored.
        """
        parent = self

        class _FileBar:
            def __init__(self, *args, total: int | None = None, initial: int = 0, **kwargs):
                if not sized and total:
                    parent.grow(total)
                if initial:
                    parent.update(initial)

            def update(self, n: int | float | None = 1) -> None:
                parent.update(int(n or 0))

            def update_transfer(self, n: int | float | None = 1) -> None:
                pass

            def set_postfix_str(self, *args, **kwargs) -> None:
                pass

            def close(self) -> None:
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

        return _FileBar
