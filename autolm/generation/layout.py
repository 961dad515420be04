"""Weight memory layout for fast decoding on CPU.

Decoding one token is a chain of matrix-vector products, so its speed is how fast the weights stream
from memory. Measured with torch 2.13 on an AVX2 CPU (bench/generate.py, 2 threads): a float32
`F.linear(x, W)` streams W fastest when W is stored column-major (its transpose contiguous), up to 1.7x
for the 49152-row lm_head; bfloat16 is the reverse (column-major is ~10x slower). So before decoding,
float32 linear weights on the CPU are re-laid column-major and everything else row-major.
Under torch.compile the row-major layout is kept: inductor's code for column-major weights was ~15x
slower than eager there.
Names, shapes, values and `state_dict()` are unchanged (saving makes tensors contiguous).
"""

from __future__ import annotations

import torch
from torch import nn


def _column_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0]


def use_fast_layout(model: nn.Module, compiled: bool = False) -> None:
    """Re-lay each linear weight in the layout that streams fastest for its dtype and device (in place)."""
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear) or id(module.weight) in seen:
                continue
            weight = module.weight
            seen.add(id(weight))
            if weight.device.type != "cpu" or weight.is_meta:
                continue
            want_column = weight.dtype == torch.float32 and not compiled
            if want_column and not _column_major(weight):
                # a tied lm_head shares this Parameter with the embedding, so both follow
                weight.data = weight.data.t().contiguous().t()
            elif not want_column and not weight.is_contiguous():
                weight.data = weight.data.contiguous()
