"""`python -m autolm.kernels`: build the native CPU kernels now (scripts/setup.sh runs it at install)."""

from __future__ import annotations

import sys

from . import build, unsupported_reason

reason = unsupported_reason()
if reason is not None:
    print(f"autolm native CPU kernels not built: {reason}; decoding uses torch's kernels.")
    sys.exit(0)
try:
    print(f"autolm native CPU kernels: {build()}")
except RuntimeError as exc:  # no compiler: a fallback, not a failed install
    print(f"autolm native CPU kernels not built ({exc}); decoding uses torch's kernels.")
