"""Mistral against transformers 5 on the same tiny random weights (a window shorter than the sequence),
its own classes and file, the native decode step; and a Llama 3.1-style GGUF whose rope scaling lives in
the rope_freqs tensor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_gguf import Q, gguf_name, llama_cpp_permute, write_gguf

import autolm

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    sliding_window=6,
    pad_token_id=0,
)


def reference(task: str = "ForCausalLM", **overrides):
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, f"Mistral{task}")(transformers.MistralConfig(**(TINY | overrides))).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.1)
            else:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def batch(length: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, TINY["vocab_size"], (2, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask


def test_mistral_is_its_own_family():
    from autolm import models
    from autolm.models import mistral

    assert models.MODELS["mistral"]["module"] == "mistral"
    assert models.architectures()["MistralForCausalLM"] == "mistral"
    assert mistral.MistralForCausalLM.__module__ == "autolm.models.mistral"


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_logits_and_greedy_ids_match_transformers(tmp_path, cache, native_steps):
    ref = reference()
    ref.save_pretrained(tmp_path)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model).__name__ == "MistralForCausalLM"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
    args = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    if cache == "static":
        args["cache_implementation"] = "static"
    assert torch.equal(model.generate(ids, **args), ref.generate(ids, **args))
    assert len(native_steps) == 11


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_step_computes_what_the_torch_forward_does(tmp_path, dtype, native_kernels):
    from autolm.kernels.decoder import native_decoder

    reference().save_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    ids, mask = batch()
    with torch.no_grad():
        cache = model.make_cache(2)
        model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        token = torch.tensor([5, 7])
        full = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        position = (full.cumsum(-1) - 1)[:, -1:]
        expected = model(
            token[:, None], attention_mask=full, position_ids=position, past_key_values=copy.deepcopy(cache)
        ).logits[:, -1]
        got = native_decoder(model).step(token, position, full, cache)
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    assert (got - expected.float()).abs().max().item() <= tolerance


def test_save_pretrained_loads_in_transformers(tmp_path):
    import transformers

    ref = reference()
    ref.save_pretrained(tmp_path / "ref")
    autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "ref").save_pretrained(tmp_path / "saved")
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "saved", output_loading_info=True
    )
    assert type(back).__name__ == "MistralForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask = batch()
    with torch.no_grad():
        diff = back.eval()(ids, attention_mask=mask).logits - ref(ids, attention_mask=mask).logits
    assert diff[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("task", ["ForSequenceClassification", "ForTokenClassification"])
def test_classification_heads_match_transformers(tmp_path, task):
    ref = reference(task, num_labels=3)
    ref.save_pretrained(tmp_path)
    model, info = getattr(autolm, f"AutoModel{task}").from_pretrained(tmp_path, output_loading_info=True)
    assert type(model).__name__ == type(ref).__name__
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    if task == "ForTokenClassification":
        want, got = want[mask.bool()], got[mask.bool()]
    assert (got - want).abs().max().item() <= 1e-5


# --- Llama 3.1's rope_freqs in GGUF --------------------------------------------------------------

LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 8.0,
    "original_max_position_embeddings": 1024,
}


def rope_freqs(config) -> np.ndarray:
    """llama.cpp's converter (LlamaModel.generate_extra_tensors): each frequency's divisor."""
    p, dim = config.rope_parameters, config.hidden_size // config.num_attention_heads
    inv = 1.0 / (p["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    old, low, high, factor = (
        p["original_max_position_embeddings"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        p["factor"],
    )
    out = []
    for freq in inv:
        wavelen = 2 * np.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama31_gguf_rope_freqs_give_the_source_models_rope(tmp_path):
    """transformers' GGUF loader drops rope_freqs (default rotary, logits differ from the source);
    autolm reads it back into llama3 scaling, so its logits equal the source model's."""
    import transformers

    config = transformers.LlamaConfig(
        **(TINY | {"sliding_window": None, "head_dim": 16}), rope_parameters=dict(LLAMA3)
    )
    torch.manual_seed(0)
    source = transformers.LlamaForCausalLM(config).eval()
    c = source.config
    arch = "llama"
    metadata = {
        "general.name": "tiny-llama-3.1",
        f"{arch}.context_length": c.max_position_embeddings,
        f"{arch}.embedding_length": c.hidden_size,
        f"{arch}.block_count": c.num_hidden_layers,
        f"{arch}.feed_forward_length": c.intermediate_size,
        f"{arch}.attention.head_count": c.num_attention_heads,
        f"{arch}.attention.head_count_kv": c.num_key_value_heads,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.rope.dimension_count": 16,
        f"{arch}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        f"{arch}.vocab_size": c.vocab_size,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    tensors = {"rope_freqs.weight": (rope_freqs(c), Q.F32)}
    for name, value in source.state_dict().items():
        value = value.detach().float()
        if ".q_proj." in name:
            value = llama_cpp_permute(value, c.num_attention_heads)
        if ".k_proj." in name:
            value = llama_cpp_permute(value, c.num_key_value_heads)
        tensors[gguf_name(name)] = (value.numpy(), Q.F32)
    path = write_gguf(tmp_path / "llama31.gguf", arch, metadata, tensors)

    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    rope = model.config.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 4.0
    assert (rope["low_freq_factor"], rope["high_freq_factor"]) == (1.0, 8.0)
    assert rope["original_max_position_embeddings"] == 1024
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    ids = torch.randint(3, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, dropped = model(ids).logits, source(ids).logits, theirs.eval()(ids).logits
    assert (got - want).abs().max().item() <= 1e-5
    assert (dropped - want).abs().max().item() > 1e-4  # transformers' load of the file has no scaling
