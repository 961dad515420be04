"""Shared fixtures: tiny random models written by transformers (the oracle) into tmp dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Tests never reach the network; a stray hub call must fail fast rather than hang.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _families() -> tuple[str, ...]:
    """The decoder families with transformers' `<Prefix>ForCausalLM` naming and a Llama-shaped config
    (the TINY keys), taken from the registry so a new one is tested the day it is registered. Families
    with other shapes (GPT-2, BERT, T5) have their own test files."""
    from autolm import models

    return tuple(
        t
        for t in models.supported_model_types()
        if models.MODELS[t]["tasks"].get("causal_lm", "").endswith("ForCausalLM")
        and "num_key_value_heads" in models.get_class(t, "config")().to_dict()
    )


FAMILIES = _families()


def reference_classes(family: str):
    """transformers' (config class, causal LM class, base class, sequence classification class): the
    classes of the names autolm's registry gives the type (they are transformers' names)."""
    import transformers

    from autolm import models

    entry = models.MODELS[family]
    names = [entry["config"], *(entry["tasks"][t] for t in ("causal_lm", "base", "sequence_classification"))]
    return tuple(getattr(transformers, name) for name in names)


def make_reference(family: str, seed: int = 0, task: str = "causal_lm", **overrides):
    """A tiny random transformers model of `family` in float32, eval mode."""
    config_cls, causal, base, seqcls = reference_classes(family)
    kwargs = {**TINY, **overrides}
    if family == "qwen3":
        kwargs.setdefault("head_dim", 16)
    if family == "phi3":  # its default pad/eos ids (32000) lie outside the tiny vocabulary
        kwargs.setdefault("pad_token_id", 0)
        kwargs.setdefault("eos_token_id", 2)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model_cls = {"causal_lm": causal, "base": base, "sequence_classification": seqcls}[task]
    return model_cls(config).eval()


def save_reference(model, directory: Path, fmt: str = "safetensors") -> Path:
    """Save with transformers as safetensors / sharded safetensors, or as .bin / sharded .bin.

    transformers 5 writes only safetensors, so the .bin layouts (still common on the Hub) are written
    here the way transformers 4 wrote them: torch.save of the state dict, shards plus a weight_map index.
    """
    shard = "20KB" if fmt == "sharded_safetensors" else "5GB"
    model.save_pretrained(directory, max_shard_size=shard)
    if "bin" not in fmt:
        return directory
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for f in directory.glob("model*.safetensors*"):
        f.unlink()
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
        return directory
    names = sorted(state)
    parts = [names[i : i + 5] for i in range(0, len(names), 5)]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        shard_name = f"pytorch_model-{i:05d}-of-{len(parts):05d}.bin"
        torch.save({k: state[k] for k in part}, directory / shard_name)
        weight_map.update(dict.fromkeys(part, shard_name))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture
def tiny_llama_dir(tmp_path) -> Path:
    return save_reference(make_reference("llama"), tmp_path / "llama")


def input_ids(
    batch: int = 2, length: int = 11, vocab: int = TINY["vocab_size"], seed: int = 1
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


@pytest.fixture(scope="session")
def native_kernels():
    """The native CPU kernels, built now if need be; tests that need them are skipped, saying why, on a
    machine that cannot build them (every machine of this project's kind can)."""
    import shutil

    from autolm import kernels

    reason = kernels.unsupported_reason()
    compiler = os.environ.get("CC") or "cc"
    if reason is None and shutil.which(compiler) is None:
        reason = f"no C compiler ({compiler!r} is not on PATH; set CC)"
    if reason is not None:
        pytest.skip(f"native CPU kernels cannot run here: {reason}")
    assert kernels.ensure_loaded(), "the native kernels failed to build: see the log"
    return kernels


@pytest.fixture
def native_steps(native_kernels, monkeypatch):
    """A list that gets one entry per native decode step; fails if the native step declines a model."""
    from autolm.generation import loop

    steps: list[int] = []
    real = loop.native_decoder

    def counting(model):
        decoder = real(model)
        assert decoder is not None, "the native step must cover this model"
        step = decoder.step
        decoder.step = lambda *a, **k: steps.append(1) or step(*a, **k)
        return decoder

    monkeypatch.setattr(loop, "native_decoder", counting)
    return steps
