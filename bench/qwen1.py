"""Qwen-1 (Qwen-7B-Chat's architecture): autolm's native model vs the repo's own modeling_qwen.py under
transformers 4.32.1, greedy decode tokens/s at batch 1, float32, random weights at a 135M-like shape
(SmolLM2-135M's width and depth; Qwen-1 is multi-head, with Qwen-7B-Chat's flags: dynamic NTK and logn
attention on).

The legacy side runs in its own venv (it cannot import under transformers 5): pass its python and a folder
with the repo's .py files (configuration_qwen.py, modeling_qwen.py, qwen_generation_utils.py), e.g.

    python3 -m venv /work/venv-qwen1 && /work/venv-qwen1/bin/pip install torch==2.13.0 \\
        transformers==4.32.1 tiktoken einops transformers-stream-generator
    mkdir -p /tmp/qwen1-code && for f in configuration_qwen.py modeling_qwen.py qwen_generation_utils.py; do
        git --git-dir MIRROR_OF_Qwen-7B-Chat show HEAD:$f > /tmp/qwen1-code/$f; done
    .venv/bin/python bench/qwen1.py --legacy-python /work/venv-qwen1/bin/python --code-dir /tmp/qwen1-code

Each round runs the legacy child (its own process: load, warm-up, then a 1-token and an N-token generate,
decode rate = (N - 1) / the difference) and then autolm's timed generate in this process (streamer clock
from the first new token); best of --runs for each; prints tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import timed  # noqa: E402

CONFIG = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
    },
    "model_type": "qwen",
    "vocab_size": 49152,
    "padded_vocab_size": 49152,
    "n_embd": 576,
    "n_head": 9,
    "n_layer": 30,
    "kv_channels": 64,
    "ffn_hidden_size": 3072,  # w1 and w2 are 1536 wide, as SmolLM2-135M's MLP
    "n_positions": 8192,
    "seq_length": 2048,
    "layer_norm_epsilon": 1e-6,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "no_bias": True,
    "pos_emb": "rotary",
    "params_dtype": "torch.float32",
    "use_flash_attn": False,
    "use_dynamic_ntk": True,
    "use_logn_attn": True,
    "fp32": True,
    "bf16": False,
    "fp16": False,
    "eos_token_id": 49151,
    "tie_word_embeddings": False,
}
CODE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py")

# the legacy child: loads the folder with the repo's code, one warm-up, then one timed greedy generate
CHILD = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM

path, prompt_len, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, torch_dtype=torch.float32).eval()
ids = torch.randint(0, 49000, (1, prompt_len), generator=torch.Generator().manual_seed(0))

def elapsed(n):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    assert out.shape[1] == prompt_len + n
    return time.perf_counter() - start

def run(n):
    # the repo's generate() passes its streamer to transformers 4.32's in the wrong position, so the
    # decode time is taken as the difference of an n-token and a 1-token call (same prompt)
    return (n - 1) / (elapsed(n) - elapsed(1))

run(8)
print(json.dumps({"decode": run(new_tokens)}))
"""


def make_checkpoint(code_dir: Path) -> Path:
    """Random weights written by autolm's QWenLMHeadModel, plus the repo's code files for the legacy side."""
    import autolm

    directory = Path(os.environ.get("TMPDIR", "/tmp")) / "autolm-bench-qwen1"
    if not (directory / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = autolm.AutoModelForCausalLM.from_config(autolm.QWenConfig(**CONFIG))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
        model.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2))
    for name in CODE_FILES:
        shutil.copy(code_dir / name, directory / name)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy-python", default="/work/venv-qwen1/bin/python")
    parser.add_argument("--code-dir", type=Path, default=Path("/tmp/qwen1-code"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import autolm

    torch.set_num_threads(2)
    path = make_checkpoint(args.code_dir)
    ours = autolm.AutoModelForCausalLM.from_pretrained(path)
    assert type(ours).__module__ == "autolm.models.qwen" and ours.dtype == torch.float32
    ids = torch.randint(0, 49000, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    timed(ours, ids, 8, pad_token_id=0)  # warm-up
    best = {"autolm": 0.0, "legacy": 0.0}
    for _ in range(args.runs):  # interleaved, so drift hits both alike
        child = [args.legacy_python, "-c", CHILD, str(path), str(args.prompt), str(args.new_tokens)]
        out = subprocess.run(child, capture_output=True, text=True, check=False)
        if out.returncode:
            sys.exit(f"the legacy child failed:\n{out.stderr[-3000:]}")
        best["legacy"] = max(best["legacy"], json.loads(out.stdout.strip().splitlines()[-1])["decode"])
        best["autolm"] = max(best["autolm"], timed(ours, ids, args.new_tokens, pad_token_id=0)[1])
    legacy_version = subprocess.run(
        [args.legacy_python, "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"{platform.processor() or platform.machine()}, 2 threads, torch {torch.__version__}")
    shape = {k: CONFIG[k] for k in ("vocab_size", "n_embd", "n_head", "n_layer", "ffn_hidden_size")}
    print(f"qwen (Qwen-1) {shape}, dynamic NTK + logn on, random weights, float32")
    print(f"prompt {args.prompt} tokens, {args.new_tokens} new tokens, best of {args.runs}")
    print(
        f"{'greedy decode batch 1 (tok/s)':<32}{'autolm':>8}{'legacy code (transformers ' + legacy_version + ')':>40}"
    )
    a, t = best["autolm"], best["legacy"]
    print(f"{'':<32}{a:>8.1f}{t:>40.1f}   ratio {a / t:.2f}")


if __name__ == "__main__":
    main()
