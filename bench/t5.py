"""T5: autolm vs transformers on random weights at the real shapes (flan-t5-small by default), float32.

Load: `AutoModelForSeq2SeqLM.from_pretrained` in fresh processes (bench/load.py's child), median of
--repeat. Decode: greedy tokens/s at batch 1, a 40-token input and 128 new tokens forced (min_new_tokens),
both models in this process, runs interleaved, best of --runs. Prints ratios (autolm / transformers) and
the machine.

Run: .venv/bin/python bench/t5.py [--shape flan-t5-small|flan-t5-base|t5-small]
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

from generate import Clock  # noqa: E402
from load import run_child  # noqa: E402

IDS = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
FLAN = dict(IDS, feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=32128)
SHAPES = {
    "flan-t5-small": dict(FLAN, d_model=512, d_ff=1024, d_kv=64, num_layers=8, num_heads=6),
    "flan-t5-base": dict(FLAN, d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_heads=12),
    "t5-small": dict(IDS, d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8, vocab_size=32128),
}


def make_checkpoint(shape: str) -> Path:
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"autolm-bench-{shape}"
    if not (directory / "model.safetensors").is_file():
        from transformers import T5Config, T5ForConditionalGeneration

        torch.manual_seed(0)
        T5ForConditionalGeneration(T5Config(**SHAPES[shape])).eval().save_pretrained(directory)
    return directory


def timed(model, input_ids: torch.Tensor, new_tokens: int) -> float:
    """Decode tokens/s of one greedy generate call (the first new token, which pays for the encoder
    and the cross-attention keys/values, excluded)."""
    clock = Clock()
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        streamer=clock,
    )
    assert out.shape[1] == 1 + new_tokens, out.shape  # the decoder start token, then the new ones
    # times[0] is the start token being handed over, times[1] the first new token
    return (new_tokens - 1) / (clock.times[-1] - clock.times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="flan-t5-small")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--input-tokens", type=int, default=40)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    import transformers

    import autolm

    torch.set_num_threads(2)
    path = make_checkpoint(args.shape)
    loads: dict[str, list[float]] = {"autolm": [], "transformers": []}
    for _ in range(0 if args.skip_load else args.repeat):
        for lib in loads:  # interleaved, so drift hits both alike
            loads[lib].append(run_child(lib, path, "AutoModelForSeq2SeqLM")["load_s"])

    ours = autolm.AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32100, (1, args.input_tokens), generator=g)
    outs = {}
    for name, model in (("autolm", ours), ("transformers", theirs)):
        timed(model, ids, 8)  # warm-up
        outs[name] = model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    best = {"autolm": 0.0, "transformers": 0.0}
    for _ in range(args.runs):
        for name, model in (("autolm", ours), ("transformers", theirs)):
            best[name] = max(best[name], timed(model, ids, args.new_tokens))

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"{args.shape} shape, random weights, float32; transformers {transformers.__version__}")
    print(f"{'metric':<30}{'autolm':>10}{'transformers':>14}{'ratio':>8}")
    if loads["autolm"]:
        a, t = statistics.median(loads["autolm"]), statistics.median(loads["transformers"])
        print(f"{'from_pretrained (s)':<30}{a:>10.3f}{t:>14.3f}{a / t:>8.3f}")
    a, t = best["autolm"], best["transformers"]
    print(f"{'greedy decode batch 1 (tok/s)':<30}{a:>10.1f}{t:>14.1f}{a / t:>8.2f}")
    print(f"same greedy ids (32 tokens): {torch.equal(outs['autolm'], outs['transformers'])}")


if __name__ == "__main__":
    main()
