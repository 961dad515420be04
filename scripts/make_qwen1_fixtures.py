"""Write tests/data/qwen1/: tiny random Qwen-1 models built and run with the repo's own code (Qwen-7B-Chat's
configuration_qwen.py / modeling_qwen.py), and what that code computes on them.

Run in an oracle venv (transformers==4.32.1 torch==2.13.0 tiktoken einops transformers-stream-generator):
    python scripts/make_qwen1_fixtures.py CODE_DIR
CODE_DIR holds the repo's .py files (e.g. `git show HEAD:modeling_qwen.py` from a mirror of
Qwen/Qwen-7B-Chat). Nothing of that code is written into this repo: only weights, configs and outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "qwen1"
BASE = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
    },
    "model_type": "qwen",
    "vocab_size": 512,
    "padded_vocab_size": 512,
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "kv_channels": 16,
    "ffn_hidden_size": 256,
    "n_positions": 128,
    "seq_length": 16,
    "layer_norm_epsilon": 1e-6,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "no_bias": True,
    "pos_emb": "rotary",
    "params_dtype": "torch.float32",
    "use_flash_attn": False,
    "fp32": True,
    "bf16": False,
    "fp16": False,
    "eos_token_id": 511,
    "tie_word_embeddings": False,
}
VARIANTS = {
    "plain": {},
    "ntk": {"use_dynamic_ntk": True},
    "logn": {"use_logn_attn": True},
    "ntk_logn": {"use_dynamic_ntk": True, "use_logn_attn": True},
    "partial_bias": {"rotary_pct": 0.5, "no_bias": False, "use_dynamic_ntk": True, "use_logn_attn": True},
}


def main(code_dir: str) -> None:
    sys.path.insert(0, str(Path(code_dir).resolve().parent))
    package = Path(code_dir).resolve().name
    configuration = __import__(f"{package}.configuration_qwen", fromlist=["QWenConfig"])
    modeling = __import__(f"{package}.modeling_qwen", fromlist=["QWenLMHeadModel"])
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    prompts = {
        "short": torch.randint(0, 511, (1, 9), generator=g),
        "long": torch.randint(0, 511, (1, 40), generator=g),
    }
    expected = {"prompts": {k: v[0].tolist() for k, v in prompts.items()}, "variants": {}}
    logits = {}
    for i, (name, extra) in enumerate(VARIANTS.items()):
        torch.manual_seed(i + 1)
        config = configuration.QWenConfig(
            **{
                **BASE,
                **extra,
                "use_dynamic_ntk": extra.get("use_dynamic_ntk", False),
                "use_logn_attn": extra.get("use_logn_attn", False),
            }
        )
        model = modeling.QWenLMHeadModel(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2 if p.dim() > 1 else 0.5)
            for block in model.transformer.h:
                block.ln_1.weight.add_(1.0)
                block.ln_2.weight.add_(1.0)
        folder = OUT / name
        folder.mkdir(exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({**BASE, **extra}, indent=2) + "\n")
        record = {}
        with torch.no_grad():
            for pname, ids in prompts.items():
                logits[f"{name}/{pname}"] = model(ids).logits[0].contiguous()
                out = model.generate(
                    ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
                )
                record[f"greedy_{pname}"] = out[0, ids.shape[1] :].tolist()
        expected["variants"][name] = record
    (OUT / "expected_model.json").write_text(json.dumps(expected, indent=1) + "\n")
    save_file(logits, OUT / "expected_logits.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
