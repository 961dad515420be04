"""Warm-cache load of a tiny model by hub id (branch and sha): autolm vs transformers, same loopback hub.

    .venv/bin/python bench/hub.py

Counts the requests reaching the server and the wall time per load, and prints autolm / transformers.
Uses the full model loader (AutoModelForCausalLM) when autolm has it, else AutoConfig + weight resolution.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubserver import commit_files, head, make_repo, serve_repos  # noqa: E402

REPEAT = 5


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    src = make_repo(tmp / "src", {"README.md": b"bench"})  # files are committed below
    with serve_repos({"org/bench": src}, tmp) as hub:
        # transformers' huggingface_hub reads HF_ENDPOINT at import: set it first
        os.environ["HF_ENDPOINT"] = hub.url
        os.environ["HF_HUB_CACHE"] = str(tmp / "cache")
        run(hub, tmp, src)


def run(hub, tmp: Path, repo: Path) -> None:
    import torch
    import transformers

    import autolm
    from autolm.hub import clear_resolved, open_repo

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp / "saved")
    commit_files(repo, {p.name: p.read_bytes() for p in (tmp / "saved").iterdir()})
    sha = head(repo)
    full = hasattr(autolm, "AutoModelForCausalLM")

    def autolm_load(rev: str) -> None:
        clear_resolved()  # each load starts cold in memory, warm on disk
        if full:
            autolm.AutoModelForCausalLM.from_pretrained("org/bench", revision=rev)
        else:
            r = open_repo("org/bench", revision=rev)
            autolm.AutoConfig.from_pretrained("org/bench", revision=rev)
            r.fetch(["model.safetensors"])

    def transformers_load(rev: str) -> None:
        if full:
            transformers.AutoModelForCausalLM.from_pretrained("org/bench", revision=rev)
        else:
            transformers.AutoConfig.from_pretrained("org/bench", revision=rev)

    if True:
        autolm_load("main"), transformers_load("main")  # warm the cache (and one-off telemetry)
        print(
            f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        )
        print(
            f"what: {'AutoModelForCausalLM' if full else 'AutoConfig + weights resolution'}, warm cache, loopback olah"
        )
        for label, rev in (("branch", "main"), ("sha", sha)):
            row = {}
            for name, fn in (("autolm", autolm_load), ("transformers", transformers_load)):
                times, reqs = [], []
                for _ in range(REPEAT):
                    hub.reset()
                    t = time.perf_counter()
                    fn(rev)
                    times.append(time.perf_counter() - t)
                    reqs.append(hub.count())
                row[name] = (statistics.median(times), max(reqs))
            (ta, ra), (tt, rt) = row["autolm"], row["transformers"]
            print(
                f"{label:6}  autolm {ta * 1000:7.1f} ms {ra} req | transformers {tt * 1000:7.1f} ms {rt} req"
                f" | time ratio {ta / tt:.2f}x"
            )


if __name__ == "__main__":
    main()
