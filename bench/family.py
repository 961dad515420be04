"""Decode speed of a family defined outside autolm (tests/custom_family.py, "tinylm": registered
through the public API, with its own names and describe_decoder) against transformers' Llama on the
same weights, float32, batch 1, in one process.

Shape: SmolLM2-135M's (hidden 576, 30 layers, 9 heads, 3 kv heads, vocab 49152), GELU-tanh MLP, random
weights written once by transformers. 38-token prompt, 128 new tokens forced, 2 threads, runs
interleaved, best of 3.

Run: .venv/bin/python bench/family.py
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from custom_family import register, write_checkpoint  # noqa: E402
from generate import SMOL_SHAPE, timed  # noqa: E402

# SmolLM2-135M's shape, untied (the family has its own output matrix)
SHAPE = {
    k: v for k, v in SMOL_SHAPE.items() if k not in ("tie_word_embeddings", "bos_token_id", "eos_token_id")
}


def main() -> None:
    import transformers

    import autolm

    torch.set_num_threads(2)
    register()
    directory = Path(tempfile.gettempdir()) / "autolm-bench-tinylm-135m"
    if not (directory / "config.json").exists():
        write_checkpoint(directory, **SHAPE)
    ours = autolm.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    theirs = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.randint(1, SHAPE["vocab_size"], (1, 38), generator=torch.Generator().manual_seed(0))
    timed(ours, ids, 8)  # warm-up: layouts, kernels
    timed(theirs, ids, 8)
    best = {"autolm": (1e9, 0.0), "transformers": (1e9, 0.0)}
    for _ in range(3):
        for name, model in (("autolm", ours), ("transformers", theirs)):
            ttft, tps = timed(model, ids, 128)
            best[name] = (min(best[name][0], ttft), max(best[name][1], tps))
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"{type(ours).__name__} (tests/custom_family.py) vs transformers {transformers.__version__} LlamaForCausalLM"
    )
    for name, (ttft, tps) in best.items():
        print(f"  {name:12s} decode {tps:6.1f} tok/s   TTFT {ttft * 1000:6.0f} ms")
    a, b = best["autolm"], best["transformers"]
    print(f"  ratio        decode {a[1] / b[1]:.2f}x   TTFT {a[0] / b[0]:.2f}")


if __name__ == "__main__":
    main()
