"""Phi-3 against transformers 5 on the same tiny random weights: longrope crossing
original_max_position_embeddings while generating (short factors, then the whole sequence again with the
long ones), partial rotary, a sliding window shorter than the sequence, fused qkv_proj / gate_up_proj
read and written under their names, the native decode step, and GGUF files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_gguf import Q, write_gguf

import autolm

HALF = 4  # rotary pairs: head_dim 16, partial_rotary_factor 0.5
LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 10000.0,
    "short_factor": [1.0, 1.2, 1.5, 2.0],
    "long_factor": [1.0, 3.0, 6.0, 12.0],
    "partial_rotary_factor": 0.5,
}
TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    original_max_position_embeddings=16,
    pad_token_id=0,
    eos_token_id=2,
    bos_token_id=1,
    partial_rotary_factor=0.5,
    sliding_window=7,
)


def reference(**overrides):
    """A transformers Phi-3 with random weights (norms perturbed, so that they matter)."""
    import transformers

    kwargs = TINY | {"rope_parameters": dict(LONGROPE)} | overrides
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(transformers.Phi3Config(**kwargs)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.1)
            else:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def batch(length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, TINY["vocab_size"], (2, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    return ids, mask


@pytest.fixture
def pair(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    return ref, model


@pytest.mark.parametrize("length", [12, 24])  # within and past original_max_position_embeddings (16)
def test_logits_match_transformers(pair, length):
    ref, model = pair
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert "model.layers.0.self_attn.qkv_proj.weight" in dict(model.named_parameters())
    ids, mask = batch(length)
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generation_crossing_the_longrope_switch_matches_transformers(pair, cache, native_steps):
    """Prompt of 12, 12 new tokens: positions cross 16, where transformers drops the cache and runs the
    whole sequence again with the long factors; ids and every step's logits are the same."""
    ref, model = pair
    ids, mask = batch(12)
    args = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    args |= dict(return_dict_in_generate=True, output_logits=True)
    if cache == "static":
        args["cache_implementation"] = "static"
    want, got = ref.generate(ids, **args), model.generate(ids, **args)
    assert torch.equal(got.sequences, want.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(got.logits, want.logits)) <= 1e-5
    assert len(native_steps) == 10  # every step but the first token's and the rerun at the switch


def test_the_rerun_is_what_transformers_does(pair):
    """Without the rerun at the switch, the logits after it would differ (cached keys keep the short
    factors): the behaviour checked above is not an accident of small weights."""
    ref, model = pair
    ids, mask = batch(12)
    args = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    args |= dict(return_dict_in_generate=True, output_logits=True)
    want = ref.generate(ids, **args)
    model.rerun_length = lambda: None
    got = model.generate(ids, **args)
    assert (got.logits[-1] - want.logits[-1]).abs().max().item() > 1e-3


def test_default_rope_and_full_rotary(tmp_path, native_steps):
    ref = reference(rope_parameters={"rope_type": "default", "rope_theta": 500.0}, partial_rotary_factor=1.0)
    ref.save_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch(10)
    args = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(ids, **args), ref.generate(ids, **args))
    assert len(native_steps) == 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("past", [10, 20])  # short and long factors
def test_native_step_computes_what_the_torch_forward_does(tmp_path, dtype, past, native_kernels):
    from autolm.kernels.decoder import native_decoder

    reference().save_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    ids, mask = batch(past)
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


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    import transformers

    ref, model = pair
    model.save_pretrained(tmp_path / "saved")
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "saved", output_loading_info=True
    )
    assert type(back).__name__ == "Phi3ForCausalLM"
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    ids, mask = batch(20)
    with torch.no_grad():
        diff = back.eval()(ids, attention_mask=mask).logits - ref(ids, attention_mask=mask).logits
    assert diff[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_classification_heads_match_transformers(tmp_path, task):
    import transformers

    cls = {
        "sequence_classification": "ForSequenceClassification",
        "token_classification": "ForTokenClassification",
    }
    kwargs = TINY | {"rope_parameters": dict(LONGROPE), "num_labels": 3}
    torch.manual_seed(0)
    ref = getattr(transformers, f"Phi3{cls[task]}")(transformers.Phi3Config(**kwargs)).eval()
    ref.save_pretrained(tmp_path)
    auto = getattr(autolm, f"AutoModel{cls[task]}")
    model, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model).__name__ == type(ref).__name__
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch(12)
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    if task == "token_classification":
        want, got = want[mask.bool()], got[mask.bool()]
    assert (got - want).abs().max().item() <= 1e-5


# --- GGUF ------------------------------------------------------------------------------------------

_PHI3_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_phi3_gguf(path, model, longrope: bool = False):
    """As llama.cpp's converter writes Phi-3: fused tensors as they are, rotary width in
    rope.dimension_count, longrope factors as rope_factors_long/short tensors."""
    c = model.config
    arch = "phi3"
    head = c.hidden_size // c.num_attention_heads
    metadata = {
        "general.name": "tiny-phi3",
        f"{arch}.context_length": c.max_position_embeddings,
        f"{arch}.embedding_length": c.hidden_size,
        f"{arch}.block_count": c.num_hidden_layers,
        f"{arch}.feed_forward_length": c.intermediate_size,
        f"{arch}.attention.head_count": c.num_attention_heads,
        f"{arch}.attention.head_count_kv": c.num_key_value_heads,
        f"{arch}.rope.freq_base": float(c.rope_parameters["rope_theta"]),
        f"{arch}.rope.dimension_count": int(head * c.rope_parameters.get("partial_rotary_factor", 1.0)),
        f"{arch}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        f"{arch}.vocab_size": c.vocab_size,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
    }
    tensors = {}
    for name, value in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        if stem in _PHI3_GGUF:
            gguf = f"{_PHI3_GGUF[stem]}.{suffix}"
        else:
            _, _, layer, rest = stem.split(".", 3)
            gguf = f"blk.{layer}.{_PHI3_GGUF[rest]}.{suffix}"
        tensors[gguf] = (value.detach().float().numpy(), Q.F32)
    if longrope:
        p = c.rope_parameters
        metadata[f"{arch}.rope.scaling.original_context_length"] = p["original_max_position_embeddings"]
        tensors["rope_factors_long.weight"] = (np.array(p["long_factor"], dtype=np.float32), Q.F32)
        tensors["rope_factors_short.weight"] = (np.array(p["short_factor"], dtype=np.float32), Q.F32)
    return write_gguf(path, arch, metadata, tensors)


def test_phi3_gguf_logits_equal_transformers_load_of_the_same_file(tmp_path):
    """Default rotary over half of each head: transformers reads the same file (its phi3 table keeps
    attn_qkv and ffn_up fused, as autolm's)."""
    import transformers

    source = reference(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        sliding_window=None,
    )
    path = write_phi3_gguf(tmp_path / "phi3.gguf", source)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    assert type(model).__name__ == "Phi3ForCausalLM"
    ids, mask = batch(12)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        want = source(ids, attention_mask=mask).logits
        ref = theirs.eval()(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
    # transformers ignores rope.dimension_count and rotates whole heads: equal only with full rotary
    assert theirs.config.rope_parameters.get("partial_rotary_factor", 1.0) == 1.0
    assert (ref - want)[mask.bool()].abs().max().item() > 1e-4


def test_phi3_gguf_full_rotary_equals_transformers(tmp_path):
    import transformers

    source = reference(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        partial_rotary_factor=1.0,
        sliding_window=None,
    )
    path = write_phi3_gguf(tmp_path / "phi3.gguf", source)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    ids, mask = batch(12)
    with torch.no_grad():
        got, want = model(ids, attention_mask=mask).logits, theirs.eval()(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


def test_phi3_gguf_longrope_factors_equal_the_source_model(tmp_path):
    """transformers' GGUF loader drops rope_factors_long/short; autolm reads them into longrope, so the
    logits past original_max_position_embeddings equal the source model's."""
    source = reference(sliding_window=None)
    path = write_phi3_gguf(tmp_path / "phi3.gguf", source, longrope=True)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    assert model.config.rope_parameters["rope_type"] == "longrope"
    ids, mask = batch(24)
    with torch.no_grad():
        got, want = model(ids, attention_mask=mask).logits, source(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
