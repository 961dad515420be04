"""Load benchmark: autolm vs transformers `from_pretrained` on a SmolLM2-135M-shaped checkpoint.

Run: .venv/bin/python bench/load.py [--repeat 3]
Each measurement runs in a fresh process so import costs and peak RSS are honest. Prints a table
with ratios (autolm / transformers) and the machine.
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

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)

CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
lib, path, auto = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
torch.set_num_threads(2)
Auto = getattr(__import__(lib, fromlist=[auto]), auto)
t_import = time.perf_counter()
before = rss()
t1 = time.perf_counter()
model = Auto.from_pretrained(path, dtype=torch.float32)
t2 = time.perf_counter()
ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
with torch.inference_mode():
    if getattr(model.config, "is_encoder_decoder", False):
        model(input_ids=ids, decoder_input_ids=ids[:, :1])
    else:
        model(ids)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"import_s": t_import - t0, "load_s": t2 - t1, "rss_before": before, "peak": peak,
                  "growth": peak - before, "total_s": time.perf_counter() - t0}))
"""


def make_checkpoint(directory: Path) -> Path:
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    model.save_pretrained(directory)
    return directory


def run_child(lib: str, path: Path, auto: str = "AutoModelForCausalLM") -> dict:
    """One fresh process: import `lib` ("autolm" or "transformers"), `auto`.from_pretrained(path), one forward."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, lib, str(path), auto], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "autolm-bench-135m"
    )
    args = parser.parse_args()
    path = make_checkpoint(args.dir)
    size = (path / "model.safetensors").stat().st_size
    runs: dict[str, list[dict]] = {"autolm": [], "transformers": []}
    for _ in range(args.repeat):
        for lib in runs:  # interleaved, so drift hits both alike
            runs[lib].append(run_child(lib, path))

    def med(lib: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[lib])

    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(
        f"checkpoint: {path} ({size / 1e6:.0f} MB, float32 safetensors); median of {args.repeat} fresh processes"
    )
    print(f"{'metric':<34}{'autolm':>12}{'transformers':>14}{'ratio':>8}")
    rows = [
        ("from_pretrained (s)", "load_s", 1),
        ("whole process: import+load+fwd (s)", "process_s", 1),
        ("import (s)", "import_s", 1),
        ("peak RSS (MB)", "peak", 1e6),
        ("RSS growth load+forward (MB)", "growth", 1e6),
    ]
    for label, key, scale in rows:
        a, t = med("autolm", key) / scale, med("transformers", key) / scale
        print(f"{label:<34}{a:>12.3f}{t:>14.3f}{a / t:>8.2f}")
    print(
        f"RSS growth / checkpoint size: autolm {med('autolm', 'growth') / size:.2f}x, "
        f"transformers {med('transformers', 'growth') / size:.2f}x"
    )


if __name__ == "__main__":
    main()
