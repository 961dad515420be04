"""GPT-2: autolm vs transformers on random weights at the real shapes (gpt2 124M by default), float32.

Load: `from_pretrained` in fresh processes (bench/load.py's child), median of --repeat. Decode: greedy
tokens/s at batch 1, a 38-token prompt and 128 new tokens forced, both models in this process, runs
interleaved, best of --runs. Prints ratios (autolm / transformers) and the machine.

Run: .venv/bin/python bench/gpt2.py [--shape gpt2|distilgpt2|gpt2-medium] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import timed  # noqa: E402
from load import run_child  # noqa: E402

SHAPES = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "distilgpt2": dict(n_embd=768, n_layer=6, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
}


def make_checkpoint(shape: str) -> Path:
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"autolm-bench-{shape}"
    if not (directory / "model.safetensors").is_file():
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**SHAPES[shape])).eval().save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="gpt2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    import transformers

    import autolm

    torch.set_num_threads(2)
    path = make_checkpoint(args.shape)
    loads: dict[str, list[float]] = {"autolm": [], "transformers": []}
    for _ in range(args.repeat):
        for lib in loads:  # interleaved, so drift hits both alike
            loads[lib].append(run_child(lib, path)["load_s"])

    ours = autolm.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(path, dtype=dtype).eval()
    ids = torch.randint(0, 50257, (1, 38), generator=torch.Generator().manual_seed(0))
    for model in (ours, theirs):
        timed(model, ids, 8, pad_token_id=50256)  # warm-up
    best = {"autolm": 0.0, "transformers": 0.0}
    for _ in range(args.runs):
        for name, model in (("autolm", ours), ("transformers", theirs)):
            best[name] = max(best[name], timed(model, ids, args.new_tokens, pad_token_id=50256)[1])

    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{args.shape} shape, random weights, {args.dtype}; transformers {transformers.__version__}")
    print(f"{'metric':<30}{'autolm':>10}{'transformers':>14}{'ratio':>8}")
    a, t = statistics.median(loads["autolm"]), statistics.median(loads["transformers"])
    print(f"{'from_pretrained (s)':<30}{a:>10.3f}{t:>14.3f}{a / t:>8.3f}")
    a, t = best["autolm"], best["transformers"]
    print(f"{'greedy decode batch 1 (tok/s)':<30}{a:>10.1f}{t:>14.1f}{a / t:>8.2f}")


if __name__ == "__main__":
    main()
