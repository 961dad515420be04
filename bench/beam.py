"""Beam search speed, autolm vs transformers in one process: 4 beams, float32, a random SmolLM2-135M shape.

Each beam is a row of the same decoding loop as greedy decoding (autolm's native step covers up to 8 rows),
so the time is the prefill plus one batched step of num_beams rows per new token. The same tokens are
checked to come out of both. 64 new tokens are forced (eos suppressed), a 38-token prompt, 2 threads.

Run: .venv/bin/python bench/beam.py [--beams 4] [--new-tokens 64] [--batch 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from generate import make_random_model


def timed(model, input_ids, new_tokens: int, beams: int) -> tuple[float, torch.Tensor]:
    """(new tokens per second per prompt, the output) for one beam-search generate call."""
    start = time.perf_counter()
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_beams=beams,
        do_sample=False,
    )
    elapsed = time.perf_counter() - start
    return (out.shape[1] - input_ids.shape[1]) / elapsed, out


def main() -> None:
    import transformers

    import autolm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=38)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    directory = make_random_model(Path(os.environ.get("TMPDIR", "/tmp")) / "autolm-bench-smol135m")
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        f"model: {directory}; float32, batch {args.batch}, {args.beams} beams, prompt {args.prompt_tokens} "
        f"tokens, {args.new_tokens} new tokens"
    )
    ours = autolm.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids = torch.randint(1, ours.config.vocab_size, (args.batch, args.prompt_tokens))
    impls = {"autolm": ours, "transformers": ref}
    for model in impls.values():
        timed(model, ids, 4, args.beams)  # warm up
    # runs interleaved, best of each: a noisy neighbour slows one run, not one implementation
    best: dict[str, float] = {name: 0.0 for name in impls}
    outputs = {}
    for _ in range(args.runs):
        for name, model in impls.items():
            with torch.inference_mode():
                tps, outputs[name] = timed(model, ids, args.new_tokens, args.beams)
            best[name] = max(best[name], tps)
    same = outputs["autolm"].tolist() == outputs["transformers"].tolist()
    for name, tps in best.items():
        print(f"{name:13} {tps:8.1f} new tokens/s per prompt ({tps * args.beams:.1f} beam-rows/s)")
    print(f"ratio autolm / transformers: {best['autolm'] / best['transformers']:.2f}x; same tokens: {same}")


if __name__ == "__main__":
    main()
