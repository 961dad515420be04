"""Fuzz autolm's loaders with seeded malformed files and print the outcomes per file kind.

    python bench/fuzz.py --cases 2000

Each case is one valid tiny file (config.json, safetensors, .bin, index, GGUF, tokenizer files, chat
template, generation_config.json) damaged by random.Random(seed), loaded through the public API in a
worker process under a time and memory limit. The generator is tests/fuzzing.py (the suite's test_fuzz
runs a few hundred of the same cases).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

# bench/gguf.py would shadow the gguf package: this folder leaves the path, tests/ joins it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fuzzing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2200)
    parser.add_argument("--start", type=int, default=0, help="first case seed")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang"
    )
    parser.add_argument("--verbose", action="store_true", help="print each failing case's traceback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = fuzzing.make_seeds(Path(tmp) / "seeds")
        began = time.monotonic()
        counts, failures = fuzzing.run_cases(
            seeds, Path(tmp), args.cases, args.start, args.timeout, log=print if args.verbose else None
        )
        elapsed = time.monotonic() - began
    print(
        f"{args.cases} cases in {elapsed:.0f} s on {platform.node()} ({platform.processor() or platform.machine()})"
    )
    print(fuzzing.summary(counts))
    for kind, seed, outcome, detail in failures[:20]:
        print(f"\n{kind} case {seed}: {outcome}\n{detail.strip().splitlines()[-1] if detail.strip() else ''}")


if __name__ == "__main__":
    main()
