"""Qwen3-MoE: autolm vs transformers on random weights at a small MoE shape (hidden 512, 16 experts,
top-4, 4 layers), float32.

Load: `from_pretrained` in fresh processes (bench/load.py's child), median of --repeat. Decode: greedy
tokens/s at batch 1, a 32-token prompt and --new-tokens forced, both models in this process, runs
interleaved, best of --runs. Prints ratios (autolm / transformers) and the machine.

Run: .venv/bin/python bench/moe.py
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

SHAPE = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1024,
    moe_intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    num_experts=16,
    num_experts_per_tok=4,
    norm_topk_prob=True,
    max_position_embeddings=4096,
)


def make_checkpoint() -> Path:
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / "autolm-bench-qwen3-moe"
    if not (directory / "model.safetensors").is_file():
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        torch.manual_seed(0)
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**SHAPE)).eval()
        with torch.no_grad():  # a router of zeros would pick the same experts for every token
            for name, param in model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    param.normal_(0.0, 0.5)
        model.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import transformers

    import autolm

    torch.set_num_threads(2)
    path = make_checkpoint()
    loads: dict[str, list[float]] = {"autolm": [], "transformers": []}
    for _ in range(args.repeat):
        for lib in loads:  # interleaved, so drift hits both alike
            loads[lib].append(run_child(lib, path)["load_s"])

    ours = autolm.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 32), generator=torch.Generator().manual_seed(0))
    for model in (ours, theirs):
        timed(model, ids, 8, pad_token_id=0)  # warm-up
    best = {"autolm": 0.0, "transformers": 0.0}
    for _ in range(args.runs):
        for name, model in (("autolm", ours), ("transformers", theirs)):
            best[name] = max(best[name], timed(model, ids, args.new_tokens, pad_token_id=0)[1])

    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"qwen3_moe {SHAPE}, random weights, float32; transformers {transformers.__version__}")
    print(f"{'metric':<30}{'autolm':>10}{'transformers':>14}{'ratio':>8}")
    a, t = statistics.median(loads["autolm"]), statistics.median(loads["transformers"])
    print(f"{'from_pretrained (s)':<30}{a:>10.3f}{t:>14.3f}{a / t:>8.3f}")
    a, t = best["autolm"], best["transformers"]
    print(f"{'greedy decode batch 1 (tok/s)':<30}{a:>10.1f}{t:>14.1f}{a / t:>8.2f}")


if __name__ == "__main__":
    main()
