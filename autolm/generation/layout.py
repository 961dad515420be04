"""Weight memory layout for fast decoding on CPU.

Decoding one token is a chain of matrix-vector products, so its speed is how fast the weights stream
from memory. autolm's native kernels (`autolm.kernels`, loaded here) read row-major weights, one row
at a time, at about twice the speed of torch's `F.linear` (bench/generate.py). Without them, a float32
`F.linear(x, W)` streams W fastest when W is stored column-major (up to 1.7x for the 49152-row lm_head),
while bfloat16 is the reverse (column-major ~10x slower): so float32 weights are re-laid column-major
only when the kernels are not in use. Under torch.compile the row-major layout is kept: inductor's code
for column-major weights was ~15x slower than eager there.
Names, shapes, values and `state_dict()` are unchanged (saving makes tensors contiguous).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..weights import release_pages


def _column_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0]


def use_fast_layout(model: nn.Module, compiled: bool = False) -> None:
    """Re-lay each linear weight in the layout that streams fastest for its dtype and device (in place),
    fusing the projections a module declares in `fusable` (q/k/v, gate/up) into one matrix."""
    done: set[int] = set()
    native = any(p.device.type == "cpu" for p in model.parameters()) and kernels.ensure_loaded()
    column = not compiled and not native
    with torch.no_grad():
        for module in model.modules():
            for name, parts in getattr(module, "fusable", {}).items():
                linears = [getattr(module, p) for p in parts]
                if fuse_projections(module, name, linears, column):
                    done.update(id(lin.weight) for lin in linears)
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
            elif not want_column and not weight.is_contiguous():
                weight.data = old.contiguous()
            if weight.data.data_ptr() != old.data_ptr():
                release_pages(old)  # the checkpoint's pages of the old layout are no longer needed


def fuse_projections(module: nn.Module, name: str, linears: list[nn.Linear], column: bool) -> bool:
    """Stack the linears' weights (and biases) into `module.<name>_weight` / `<name>_bias`, and make each
    linear's parameters views of it: one matmul instead of several, no extra memory. `column`: store
    float32 column-major (for torch's F.linear; the native kernels read row-major)."""
    weights = [lin.weight for lin in linears]
    biases = [lin.bias for lin in linears]
    w0 = weights[0]
    if (
        w0.device.type != "cpu"
        or w0.is_meta
        or any(w.dtype != w0.dtype or w.shape[1] != w0.shape[1] for w in weights)
        or len({b is None for b in biases}) > 1
    ):
        return False
    column = column and w0.dtype == torch.float32
    fused = getattr(module, f"{name}_weight", None)
    if (
        fused is not None
        and all(w.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr() for w in weights)
        and _column_major(fused) == column
    ):
        return True  # already fused in this layout
    rows, cols = sum(w.shape[0] for w in weights), w0.shape[1]
    fused = torch.empty(cols, rows, dtype=w0.dtype).t() if column else torch.empty(rows, cols, dtype=w0.dtype)
    fused_bias = None if biases[0] is None else torch.empty(rows, dtype=biases[0].dtype)
    start = 0
    for lin in linears:
        end = start + lin.weight.shape[0]
        fused[start:end].copy_(lin.weight)
        old = lin.weight.data
        lin.weight.data = fused[start:end]
        release_pages(old)
        if fused_bias is not None:
            fused_bias[start:end].copy_(lin.bias)
            lin.bias.data = fused_bias[start:end]
        start = end
    setattr(module, f"{name}_weight", fused)
    setattr(module, f"{name}_bias", fused_bias)
    return True
