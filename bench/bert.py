"""BERT benchmark: autolm vs transformers on a bert-base-shaped random checkpoint, float32, CPU.

- load: `AutoModel.from_pretrained` in fresh processes (import costs kept apart), median of --repeat;
- forward: throughput (sequences/s) of batch 32 x 128 tokens under `torch.inference_mode`, both models
  in this process on the same weights, runs interleaved, best of --repeat.
Prints both and the ratios (autolm / transformers) with the machine.

Run: .venv/bin/python bench/bert.py [--repeat 3] [--batch 32] [--length 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BERT_BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)

CHILD = r"""
import json, sys, time
lib, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
torch.set_num_threads(threads)
if lib == "autolm":
    from autolm import AutoModel
else:
    from transformers import AutoModel
t1 = time.perf_counter()
model = AutoModel.from_pretrained(path, dtype=torch.float32)
t2 = time.perf_counter()
print(json.dumps({"load_s": t2 - t1}))
"""


def make_checkpoint(directory: Path) -> Path:
    if (directory / "model.safetensors").is_file():
        return directory
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**BERT_BASE)).eval().save_pretrained(directory)
    return directory


def load_seconds(lib: str, path: Path, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, lib, str(path), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["load_s"]


def forward_seconds(model, inputs: dict) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "autolm-bench-bert-base"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = make_checkpoint(args.dir)

    loads: dict[str, list[float]] = {"autolm": [], "transformers": []}
    for _ in range(args.repeat):
        for lib in loads:  # interleaved, so drift hits both alike
            loads[lib].append(load_seconds(lib, path, args.threads))

    import transformers

    import autolm

    models = {
        "autolm": autolm.AutoModel.from_pretrained(path, dtype=torch.float32),
        "transformers": transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval(),
    }
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(1000, BERT_BASE["vocab_size"], (args.batch, args.length), generator=g),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
        "token_type_ids": torch.zeros(args.batch, args.length, dtype=torch.long),
    }
    with torch.inference_mode():
        same = (models["autolm"](**inputs)[0] - models["transformers"](**inputs)[0]).abs().max().item()
    forwards: dict[str, list[float]] = {"autolm": [], "transformers": []}
    for _ in range(args.repeat):
        for name, model in models.items():
            forwards[name].append(forward_seconds(model, inputs))

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, {args.threads} threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"checkpoint: {path} (bert-base shape, random, float32 safetensors)")
    load = {k: statistics.median(v) for k, v in loads.items()}
    rate = {k: args.batch / min(v) for k, v in forwards.items()}
    print(f"{'metric':<40}{'autolm':>10}{'transformers':>14}{'ratio':>8}")
    print(
        f"{'from_pretrained (s, median)':<40}{load['autolm']:>10.3f}{load['transformers']:>14.3f}"
        f"{load['autolm'] / load['transformers']:>8.2f}"
    )
    label = f"forward {args.batch}x{args.length} (seq/s, best)"
    print(
        f"{label:<40}{rate['autolm']:>10.2f}{rate['transformers']:>14.2f}"
        f"{rate['autolm'] / rate['transformers']:>8.2f}"
    )
    print(f"max |last_hidden_state difference|: {same:.2e}")


if __name__ == "__main__":
    main()
