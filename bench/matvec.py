"""Which call streams weights fastest for one token: torch's matrix-vector products vs autolm's kernel.

Batch-1 decoding multiplies one activation row by every weight matrix of the model, so its speed is
the speed at which weights stream from memory. This times each candidate over the weights of a
SmolLM2-135M-shaped model (30 layers of q/k/v/o/gate/up/down plus the 49152-row lm_head; 538 MB in
float32, far beyond the caches) and prints GB/s of weights read, best of 5, for each dtype. A plain
read of the same bytes (`torch.sum`) is printed as the bandwidth reference.

Run: .venv/bin/python bench/matvec.py [--dtypes float32,bfloat16,float16] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from autolm import kernels

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)] * 30
SHAPES.append((49152, 576))


def best_seconds(fn, weights, inputs, runs: int = 5) -> float:
    with torch.inference_mode():
        for w, x in zip(weights, inputs):
            fn(x, w)
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            for w, x in zip(weights, inputs):
                fn(x, w)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = kernels.ensure_loaded()
    print(f"{args.threads} threads, torch {torch.__version__}, native kernels {'on' if native else 'OFF'}")
    print(f"{'dtype':9} {'call':34} {'ms/token':>9} {'GB/s':>6}")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        g = torch.Generator().manual_seed(0)
        rows = [torch.randn(shape, generator=g).to(dtype) for shape in SHAPES]
        columns = [w.t().contiguous() for w in rows]  # the same matrices stored column-major
        xs = [torch.randn(1, w.shape[1], generator=g).to(dtype) for w in rows]
        size = sum(w.numel() * w.element_size() for w in rows)
        flat = torch.cat([w.reshape(-1) for w in rows])
        candidates = [
            ("torch.sum (plain read)", lambda x, w: w.sum(), [flat], [None]),
            ("F.linear(x, W)", F.linear, rows, xs),
            ("torch.mv(W, x)", lambda x, w: torch.mv(w, x[0]), rows, xs),
            ("x @ W.T, W column-major", lambda x, w: x @ w, columns, xs),
            ("torch.bmm, W split in 2", lambda x, w: torch.bmm(x.expand(2, 1, -1), w), [
                w.view(2, w.shape[0] // 2, w.shape[1]).transpose(1, 2) for w in rows
            ], xs),
        ]  # fmt: skip
        if native:
            candidates.append(("autolm kernels.linear", kernels.linear, rows, xs))
        for label, fn, weights, inputs in candidates:
            seconds = best_seconds(fn, weights, inputs)
            print(f"{name:9} {label:34} {seconds * 1e3:9.1f} {size / seconds / 1e9:6.1f}", flush=True)
        del rows, columns, flat


if __name__ == "__main__":
    main()
