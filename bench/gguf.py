"""GGUF load benchmark: the packaged SmolLM2-135M-Instruct Q4_1 GGUF, model + tokenizer, autolm vs
transformers (`from_pretrained(dir, gguf_file=...)`), plus the time from `autolm generate` process start
to its first streamed text.

Run: .venv/bin/python bench/gguf.py [--repeat 3] [--threads N]
Every measurement is a fresh process (honest import cost and peak RSS); runs are interleaved so machine
load drifts hit both libraries alike. Prints medians, ratios (autolm / transformers) and the machine.
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

# This script's name shadows the `gguf` package that autolm imports: drop its folder from the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
lib, path = sys.argv[1], Path(sys.argv[2])
import torch
if lib == "autolm":
    from autolm import AutoModelForCausalLM, AutoTokenizer
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer
t_import = time.perf_counter()
# the same call for both: a directory and the file's name
model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
t_model = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
t_tok = time.perf_counter()
with torch.inference_mode():
    model(torch.tensor([tokenizer("Hello world")["input_ids"]]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"import_s": t_import - t0, "model_s": t_model - t_import, "tokenizer_s": t_tok - t_model,
                  "load_s": t_tok - t_import, "peak": peak, "dtype": str(model.dtype)}))
"""


def run_child(lib: str, path: str, env: dict) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, lib, path], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def first_token(env: dict, threads: int | None) -> dict:
    """Seconds from starting `autolm generate` (default model) to the first byte of streamed text."""
    command = [sys.executable, "-m", "autolm", "generate", "-p", "What is the capital of France?"]
    command += ["--max-new-tokens", "16"] + (["--threads", str(threads)] if threads else [])
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.read(1)
    ttft = time.perf_counter() - start
    rest, err = process.communicate()
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(err.decode())
    stats = err.decode().strip().splitlines()[-1]
    return {"ttft_s": ttft, "process_s": total, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for every child (default: unset)"
    )
    args = parser.parse_args()
    from autolm.defaults import default_model_path

    path = str(default_model_path())
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    runs: dict[str, list[dict]] = {"autolm": [], "transformers": []}
    for _ in range(args.repeat):
        for lib in runs:  # interleaved
            runs[lib].append(run_child(lib, path, env))
    firsts = [first_token(env, args.threads) for _ in range(args.repeat)]

    def med(lib: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[lib])

    size = os.path.getsize(path)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"load avg at end: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}")
    print(f"file: {path} ({size / 1e6:.1f} MB); median of {args.repeat} fresh processes each")
    print(
        f"dtype after load: autolm {runs['autolm'][0]['dtype']}, transformers {runs['transformers'][0]['dtype']}"
    )
    print(f"{'metric':<36}{'autolm':>10}{'transformers':>14}{'ratio':>8}")
    rows = [
        ("model + tokenizer load (s)", "load_s", 1),
        ("  model from_pretrained (s)", "model_s", 1),
        ("  tokenizer from_pretrained (s)", "tokenizer_s", 1),
        ("import (s)", "import_s", 1),
        ("whole process (s)", "process_s", 1),
        ("peak RSS (MB)", "peak", 1e6),
    ]
    for label, key, scale in rows:
        a, t = med("autolm", key) / scale, med("transformers", key) / scale
        print(f"{label:<36}{a:>10.3f}{t:>14.3f}{a / t:>8.3f}")
    ttft = statistics.median(f["ttft_s"] for f in firsts)
    each = ", ".join(f"{f['ttft_s']:.2f}" for f in firsts)
    print(
        f"autolm generate (default model), process start -> first streamed text: {ttft:.2f} s (runs: {each})"
    )
    print(f"  its own report: {firsts[len(firsts) // 2]['stats']}")


if __name__ == "__main__":
    main()
