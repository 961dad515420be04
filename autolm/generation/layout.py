"""`prepare_for_decoding(model)`: weight layouts for fast CPU decoding, without changing what the
parameters mean.

Decoding one token is a chain of matrix-vector products, so its speed is how fast the weights stream
from memory. autolm's native kernels (`autolm.kernels`) read row-major weights, one row at a time, at
about twice the speed of torch's `F.linear`, and the native decode step reads every projection where
the parameter itself lives: nothing is fused or copied. Without the kernels, a float32 `F.linear(x, W)`
streams W fastest when W is stored column-major (up to 1.7x for a 49152-row lm_head), while bfloat16
is the reverse (column-major ~10x slower): so float32 weights are re-laid column-major only then.
Under torch.compile the row-major layout is kept (inductor's code for column-major was ~15x slower).

Every parameter stays the same Parameter object with the same values: a weight the user replaces is
the one used, gradients reach every parameter, `.to(dtype)` converts each weight once, and
`state_dict()` is unchanged (saving makes tensors contiguous).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..weights import release_pages


def _column_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0]


def prepare_for_decoding(model: nn.Module, compiled: bool = False) -> None:
    """Re-lay each linear weight (in place, same Parameter) in the layout that streams fastest for its
    dtype and device; loads the native kernels when they are built (never compiles them here)."""
    on_cpu = any(p.device.type == "cpu" for p in model.parameters())
    native = on_cpu and kernels.ensure_loaded(compile=False)
    if on_cpu and not native:
        kernels.build_in_background()  # used from the next generate on
    # while the kernels build in the background, keep the row-major layout they read
    column = not compiled and not native and not kernels.building()
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear) or id(module.weight) in done:
                continue
            weight = module.weight
            done.add(id(weight))
            if weight.device.type != "cpu" or weight.is_meta:
                continue
            want_column = weight.dtype == torch.float32 and column
            old = weight.data
            if want_column and not _column_major(weight):
                # a tied lm_head shares this Parameter with the embedding, so both follow
                weight.data = old.t().contiguous().t()
            elif not want_column and weight.stride(-1) != 1:
                weight.data = old.contiguous()
            if weight.data.data_ptr() != old.data_ptr():
                release_pages(old)  # the checkpoint's pages of the old layout are no longer needed
