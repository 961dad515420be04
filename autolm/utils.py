"""Small helpers of transformers' top level: `set_seed`."""

from __future__ import annotations

import random


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed `random`, numpy (when installed) and torch (every device), as `transformers.set_seed`.

    `deterministic`: also ask torch for deterministic algorithms (some ops then raise).
    """
    import torch

    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # a no-op without CUDA
    if deterministic:
        torch.use_deterministic_algorithms(True)
