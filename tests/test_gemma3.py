"""Gemma 3 (text) against transformers 5 on the same tiny random weights: logits and greedy ids with the
dynamic and the static cache on a padded batch (sliding layers with a window shorter than the sequence,
full layers with their own rope base and scaling, logit softcapping), the decode steps on the native
step, one native step against the torch forward, the legacy config keys, and save_pretrained read back
by transformers."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import autolm

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    sliding_window=4,  # shorter than prompt + new tokens
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    query_pre_attn_scalar=24,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
    },
    pad_token_id=0,
)
VARIANTS = {
    "plain": {},
    "final_softcap": dict(final_logit_softcapping=2.0),  # small enough to bend these logits
    # transformers 5 keeps the key but its attention does not apply it; the same here
    "attn_softcap": dict(attn_logit_softcapping=0.5, final_logit_softcapping=30.0),
    "one_kv_head": dict(num_key_value_heads=1, sliding_window=7),
}


def reference(**overrides):
    """A transformers Gemma3ForCausalLM with random weights (norms perturbed, so that they matter)."""
    import transformers

    config = transformers.Gemma3TextConfig(**(TINY | overrides))
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
            elif param.dim() >= 2:
                param.normal_(0.0, 0.1)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_greedy_ids_match_transformers(tmp_path, variant, native_steps):
    ref = reference(**VARIANTS[variant])
    ref.save_pretrained(tmp_path)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model).__name__ == type(ref).__name__ == "Gemma3ForCausalLM"
    assert type(model.model).__name__ == "Gemma3TextModel"
    assert type(model.config).__name__ == "Gemma3TextConfig"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
    args = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = ref.generate(ids, **args)
    assert torch.equal(model.generate(ids, **args), expected)
    assert len(native_steps) == 15  # the decode steps ran on the native step
    assert torch.equal(model.generate(ids, cache_implementation="static", **args), expected)
    assert len(native_steps) == 30


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_step_computes_what_the_torch_forward_does(tmp_path, dtype, native_kernels):
    """One decode step of a padded batch past the window, through the C kernel (its sliding and full
    layers rotating with their own tables), equals the torch forward (float32 to 1e-5; bfloat16 rounds
    at the same points)."""
    from autolm.kernels.decoder import native_decoder

    reference(final_logit_softcapping=30.0).save_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    ids, mask = batch()
    ids, mask = torch.cat([ids, ids.flip(1)]), torch.cat([mask, torch.ones_like(mask)])
    with torch.no_grad():
        cache = model.make_cache(4)
        model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        token = torch.tensor([5, 7, 9, 11])
        full = torch.cat([mask, torch.ones(4, 1, dtype=mask.dtype)], 1)
        position = (full.cumsum(-1) - 1)[:, -1:]
        expected = model(
            token[:, None], attention_mask=full, position_ids=position, past_key_values=copy.deepcopy(cache)
        ).logits[:, -1]
        got = native_decoder(model).step(token, position, full, cache)
    tolerance = 1e-5 if dtype == torch.float32 else 0.02  # one bfloat16 step at these magnitudes
    assert (got - expected.float()).abs().max().item() <= tolerance


def test_bfloat16_logits_close_to_transformers(tmp_path):
    """The embedding scale is rounded to bfloat16 and the norms run in float32, as transformers does."""
    ref = reference()
    ref.save_pretrained(tmp_path)
    ref = ref.to(torch.bfloat16)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got.float() - want.float())[mask.bool()].abs().max().item() <= 0.05


def test_legacy_config_keys(tmp_path):
    """Configs on the Hub still say sliding_window_pattern, rope_theta, rope_local_base_freq and
    rope_scaling: the layer types and each type's rope come out as transformers derives them."""
    import transformers

    ref = reference()
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("layer_types", "rope_parameters"):
        config.pop(key)
    config |= dict(
        sliding_window_pattern=3,
        rope_theta=40000.0,
        rope_local_base_freq=500.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0},
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    ours = autolm.AutoConfig.from_pretrained(tmp_path)
    assert ours.layer_types == theirs.layer_types
    for kind in ("sliding_attention", "full_attention"):
        want = theirs.rope_parameters[kind]
        assert {k: ours.rope_parameters[kind].get(k) for k in want} == want
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


def test_save_pretrained_loads_in_transformers(tmp_path):
    import transformers

    ref = reference(final_logit_softcapping=2.0)
    ref.save_pretrained(tmp_path / "ref")
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
    model.save_pretrained(tmp_path / "ours")
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(theirs).__name__ == "Gemma3ForCausalLM"
    assert theirs.config.layer_types == TINY["layer_types"]
    assert theirs.config.rope_parameters == ref.config.rope_parameters
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, theirs.eval()(ids, attention_mask=mask).logits
    assert torch.equal(got, want)


def test_base_model_hidden_states_match_transformers(tmp_path):
    import transformers

    ref = reference()
    ref.save_pretrained(tmp_path)
    base_ref = transformers.AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    base = autolm.AutoModel.from_pretrained(tmp_path)
    assert type(base).__name__ == type(base_ref).__name__ == "Gemma3TextModel"
    ids, mask = batch()
    with torch.no_grad():
        want = base_ref(ids, attention_mask=mask).last_hidden_state
        got = base(ids, attention_mask=mask).last_hidden_state
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
