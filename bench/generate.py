"""Generation speed, autolm vs transformers in one process: time to first token and decode tokens/s.

Default model: random weights in SmolLM2-135M's shape (Llama: vocab 49152, hidden 576, 30 layers, 9 heads,
3 kv heads), written once by transformers as safetensors. `--model DIR` or `--gguf PATH` switches to real
weights. 128 new tokens are forced (eos suppressed), a 38-token prompt, torch.set_num_threads(2).

compile=True on the CPU takes autolm's native decode step (faster than torch.compile's code there);
--torch-compile also times compile=True with that step turned off.

Run: .venv/bin/python bench/generate.py [--shape smol135m] [--dtypes float32,bfloat16] [--batches 1,8] [--compile]
     [--torch-compile]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

SMOL_SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=0,
)
# decode tokens/s measured on this machine with llama.cpp on SmolLM2-135M, batch 1 (the practical limit)
LLAMA_CPP = {"float32": 44.0, "float16": 73.0}


# --shape NAME -> (transformers config class, causal LM class, config keywords): random weights at a real
# model's shape; families add their own row
SHAPES = {
    "smol135m": ("LlamaConfig", "LlamaForCausalLM", SMOL_SHAPE),
    # Phi-4-mini's layout at ~175M: fused qkv/gate_up, 3/4 of each head rotated, tied embeddings
    "phi3-mini-shape": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            vocab_size=32064,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=24,
            num_attention_heads=12,
            num_key_value_heads=4,
            partial_rotary_factor=0.75,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
        ),
    ),
    # SmolLM2-135M's shape as Mistral, every layer sliding over the last 128 tokens (prompt + new > 128)
    "mistral-135m": ("MistralConfig", "MistralForCausalLM", SMOL_SHAPE | {"sliding_window": 128}),
    # Gemma 3 270M: 5 sliding layers (window 512, rope base 1e4) to 1 full (1e6), one kv head, 262k vocabulary
    "gemma3-270m": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            vocab_size=262144,
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=512,
            max_position_embeddings=32768,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    ),
}


def make_random_model(directory: Path, shape: str = "smol135m") -> Path:
    import transformers

    config_class, model_class, keywords = SHAPES[shape]
    if not (directory / "config.json").exists():
        torch.manual_seed(0)
        config = getattr(transformers, config_class)(**keywords)
        getattr(transformers, model_class)(config).save_pretrained(directory)
    return directory


class Clock:
    """A streamer that only records when each step's tokens arrive (works for any batch size)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def timed(model, input_ids, new_tokens: int, **kwargs) -> tuple[float, float]:
    """(time to first token in s, decode tokens/s per sequence) for one generate call."""
    clock = Clock()
    start = time.perf_counter()
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        streamer=clock,
        **kwargs,
    )
    assert out.shape[1] == input_ids.shape[1] + new_tokens, out.shape
    # times[0] is the prompt being handed over, times[1] the first new token
    ttft = clock.times[1] - start
    decode = (new_tokens - 1) / (clock.times[-1] - clock.times[1])
    return ttft, decode


def without_native_step(fn):
    """Run fn with autolm's native decode step turned off (torch.compile's code takes the step)."""
    from autolm.generation import loop

    def run(*args, **kwargs):
        saved = loop.native_decoder
        loop.native_decoder = lambda model: None
        try:
            return fn(*args, **kwargs)
        finally:
            loop.native_decoder = saved

    return run


def load(args, dtype: torch.dtype):
    import transformers

    import autolm

    if args.gguf:
        path = Path(args.gguf)
        if args.gguf == "default":  # the SmolLM2-135M GGUF that autolm's default-model package ships
            from autolm.defaults import default_gguf_path

            path = Path(default_gguf_path())
        ours = autolm.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        ours = autolm.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        ref = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    return ours, ref.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model directory (default: a random SmolLM2-135M shape)"
    )
    parser.add_argument(
        "--gguf", default=None, help="a .gguf file instead of --model ('default': the packaged SmolLM2-135M)"
    )
    parser.add_argument(
        "--shape", default="smol135m", choices=sorted(SHAPES), help="random weights at this shape"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=38)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time autolm with compile=True")
    parser.add_argument(
        "--torch-compile", action="store_true", help="also time compile=True with the native step off"
    )
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    if args.model is None and args.gguf is None:
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"autolm-bench-{args.shape}"
        args.model = str(make_random_model(folder, args.shape))
    torch.set_num_threads(args.threads)

    print(
        f"machine: {platform.platform()}, cpu {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, {args.threads} threads, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"model: {args.gguf or args.model}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens"
    )
    header = f"{'dtype':9} {'batch':>5} {'impl':18} {'TTFT ms':>9} {'tok/s/seq':>10} {'tok/s total':>12} {'vs ref':>7}"
    print(header)
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        ours, ref = load(args, dtype)
        vocab = ours.config.vocab_size
        for batch in (int(b) for b in args.batches.split(",")):
            torch.manual_seed(0)
            ids = torch.randint(1, vocab, (batch, args.prompt_tokens))
            impls = [("autolm", ours, {}, timed)]
            if args.compile:
                impls.append(("autolm compile", ours, {"compile": True}, timed))
            if args.torch_compile:
                impls.append(("autolm torch.compile", ours, {"compile": True}, without_native_step(timed)))
            if not args.skip_reference:
                impls.append(("transformers", ref, {}, timed))
            for _, model, kwargs, run in impls:
                run(model, ids, 8, **kwargs)  # warm up (and compile)
            # runs interleaved, best of each: a noisy neighbour slows one run, not one implementation
            runs = {name: [] for name, *_ in impls}
            for _ in range(args.runs):
                for name, model, kwargs, run in impls:
                    runs[name].append(run(model, ids, args.new_tokens, **kwargs))
            results = {name: (min(r[0] for r in rs), max(r[1] for r in rs)) for name, rs in runs.items()}
            base = results.get("transformers")
            for name, (ttft, tps) in results.items():
                ratio = f"{tps / base[1]:.2f}x" if base else "-"
                line = f"{dtype_name:9} {batch:5d} {name:18} {ttft * 1e3:9.1f} {tps:10.1f} {tps * batch:12.1f} {ratio:>7}"
                print(line, flush=True)
                rows.append((dtype_name, batch, name, ttft, tps))
                if batch == 1 and name.startswith("autolm") and dtype_name in LLAMA_CPP:
                    print(
                        f"{'':34}autolm / llama.cpp {dtype_name} ({LLAMA_CPP[dtype_name]} tok/s): "
                        f"{tps / LLAMA_CPP[dtype_name]:.2f}"
                    )
            if base:
                for name in results:
                    if name != "transformers":
                        print(f"{'':34}TTFT {name} / transformers: {results[name][0] / base[0]:.2f}")
        del ours, ref


if __name__ == "__main__":
    main()
