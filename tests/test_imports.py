"""Importing a model family or the configs stays cheap: no hub code, no huggingface_hub, no progress bars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("huggingface_hub", "tqdm", "autolm.hub")
ROOT = Path(__file__).resolve().parents[1]


def new_modules(setup: str, imports: str) -> str:
    """The HEAVY modules that `imports` adds to a fresh interpreter after `setup`."""
    code = (
        f"import sys\n{setup}\nbefore = set(sys.modules)\n{imports}\n"
        f"print(sorted(m for m in set(sys.modules) - before if m.startswith({HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


def test_model_and_config_modules_do_not_load_the_hub():
    # torch itself imports tqdm (torch.hub), so what counts is what autolm adds on top
    modules = "import autolm.models.llama, autolm.configuration, autolm.modeling_utils, autolm.weights"
    assert new_modules("import torch", modules) == "[]"


def test_import_autolm_loads_no_hub_code():
    assert new_modules("", "import autolm; autolm.__version__") == "[]"
    assert new_modules("", "import autolm, torch") != "[]"  # the check does see what torch brings
