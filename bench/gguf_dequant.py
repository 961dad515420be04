"""Dequantize every tensor of the packaged SmolLM2-135M Q4_1 GGUF to float32: autolm vs gguf's numpy
dequantizer (what transformers' GGUF loader uses), in one process. Prints times, the ratio and RSS.

Run: .venv/bin/python bench/gguf_dequant.py
"""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np
import torch
from gguf import quants

from autolm.defaults import default_gguf_path
from autolm.gguf import iter_gguf_tensors, read_gguf


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def main() -> None:
    path = default_gguf_path()
    start = time.perf_counter()
    gguf = read_gguf(path)
    opened = time.perf_counter() - start
    base = rss_mb()

    ours = []
    for _ in range(3):
        start = time.perf_counter()
        kept = dict(iter_gguf_tensors(gguf, torch.float32))  # kept, as a loader would
        ours.append(time.perf_counter() - start)
        values = sum(t.numel() for t in kept.values())
        del kept
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    start = time.perf_counter()
    for tensor in gguf.tensors.values():
        np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    reference = time.perf_counter() - start

    best = min(ours)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}"
    )
    print(f"file: {path.name}, {values / 1e6:.1f}M values, opened in {opened:.2f} s")
    print(f"autolm dequantize to float32: best {best:.3f} s of {[round(t, 3) for t in ours]}")
    print(f"gguf.quants.dequantize (numpy): {reference:.3f} s; autolm / reference = {best / reference:.2f}")
    print(
        f"RSS: {base:.0f} MB after open, peak {peak:.0f} MB holding all float32 tensors ({values * 4 / 2**20:.0f} MB)"
    )


if __name__ == "__main__":
    main()
