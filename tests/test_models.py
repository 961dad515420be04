"""Same weights -> same logits and hidden states as transformers, in both directions, for every family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, input_ids, make_reference, save_reference

import autolm

ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    # a short trained length so the 11-token test input actually rescales
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
}

VARIANTS = {
    "gqa": {},
    "mha": {"num_key_value_heads": 4},
    "mqa": {"num_key_value_heads": 1},
    "tied": {"tie_word_embeddings": True},
    "untied": {"tie_word_embeddings": False},
    "bias": {"attention_bias": True},
    "old_rope_keys": {"rope_theta": 5000.0},
    **{f"rope_{name}": {"rope_scaling": dict(spec)} for name, spec in ROPE.items()},
}


def _variant(family: str, name: str) -> dict:
    kwargs = dict(VARIANTS[name])
    if name == "rope_dynamic":
        kwargs["max_position_embeddings"] = 8
    if name == "bias" and family == "llama":
        kwargs["mlp_bias"] = True
    if name == "bias" and family == "qwen2":
        kwargs = {}  # qwen2 always has q/k/v bias
    if family == "phi3" and name.startswith("rope_"):
        kwargs = {}  # Phi-3 has default and longrope rotary only (longrope: tests/test_phi3.py)
    return kwargs


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causal_lm_logits_match_transformers(tmp_path, family, variant):
    ref = make_reference(family, **_variant(family, variant))
    save_reference(ref, tmp_path)
    ids = input_ids()
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(model).__name__ == type(ref).__name__
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True)
        got = model(ids, output_hidden_states=True)
    assert _max_diff(got.logits, expected.logits) <= 1e-5
    assert len(got.hidden_states) == len(expected.hidden_states)
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert _max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["safetensors", "sharded_safetensors", "bin", "sharded_bin"])
def test_every_checkpoint_format_loads(tmp_path, family, fmt):
    ref = make_reference(family)
    save_reference(ref, tmp_path, fmt)
    names = {p.name for p in tmp_path.iterdir()}
    index = "model.safetensors.index.json" if "safetensors" in fmt else "pytorch_model.bin.index.json"
    assert (index in names) == fmt.startswith("sharded")
    model, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(model(ids).logits, ref(ids).logits) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_base_model_hidden_states(tmp_path, family):
    ref = make_reference(family, task="base")
    save_reference(ref, tmp_path)
    model = autolm.AutoModel.from_pretrained(tmp_path)
    ids = input_ids()
    with torch.no_grad():
        expected, got = ref(ids, output_hidden_states=True), model(ids, output_hidden_states=True)
    assert _max_diff(got.last_hidden_state, expected.last_hidden_state) <= 1e-5
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert _max_diff(a, b) <= 1e-5


def test_base_model_from_causal_checkpoint_and_back(tmp_path):
    """A causal-LM checkpoint loads into AutoModel (prefix stripped) and a base one into a causal LM."""
    ref = make_reference("llama")
    save_reference(ref, tmp_path / "causal")
    base, info = autolm.AutoModel.from_pretrained(tmp_path / "causal", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == ["lm_head.weight"]
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(base(ids).last_hidden_state, ref.model(ids).last_hidden_state) <= 1e-5
    save_reference(make_reference("llama", task="base"), tmp_path / "base")
    _, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert info["missing_keys"] == ["lm_head.weight"]


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classification_matches(tmp_path, family):
    ref = make_reference(family, task="sequence_classification", num_labels=3, pad_token_id=0)
    save_reference(ref, tmp_path)
    model = autolm.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids = input_ids()
    ids[0, -3:] = 0  # right padding on one row
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        expected, got = ref(ids, labels=labels), model(ids, labels=labels)
    assert got.logits.shape == (2, 3)
    assert _max_diff(got.logits, expected.logits) <= 1e-5
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5


def test_loss_matches(tmp_path):
    ref = make_reference("qwen2")
    save_reference(ref, tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = input_ids()
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        assert abs(model(ids, labels=labels).loss.item() - ref(ids, labels=labels).loss.item()) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_attention_matches_sdpa(tmp_path, family):
    save_reference(make_reference(family), tmp_path)
    sdpa = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    eager = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(sdpa(ids).logits, eager(ids).logits) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_and_kv_cache_match_transformers(tmp_path, family):
    """Left-padded batch with a mask, then one cached step, against the reference's own cache."""
    ref = make_reference(family)
    save_reference(ref, tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = input_ids(length=9)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        expected, got = (
            ref(ids, attention_mask=mask, use_cache=True),
            model(ids, attention_mask=mask, use_cache=True),
        )
        valid = mask.bool()
        assert _max_diff(got.logits[valid], expected.logits[valid]) <= 1e-5
        nxt = expected.logits[:, -1].argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        step_ref = ref(nxt, attention_mask=mask2, cache=expected.cache)
        step = model(nxt, attention_mask=mask2, past_key_values=got.past_key_values)
    assert _max_diff(step.logits, step_ref.logits) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_what_autolm_saves(tmp_path, family):
    import transformers

    ref = make_reference(family, tie_word_embeddings=family != "llama")
    save_reference(ref, tmp_path / "src")
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / "out")
    back, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(back(ids).logits, ref(ids).logits) <= 1e-5
    # and sharded, through the index
    model.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "sharded", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert _max_diff(back(ids).logits, ref(ids).logits) <= 1e-5


def test_autolm_roundtrip_bin_and_generation_config(tmp_path):
    save_reference(make_reference("llama"), tmp_path / "src")
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    assert (tmp_path / "bin" / "generation_config.json").is_file()
    again = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "bin")
    ids = input_ids()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.generation_config == model.generation_config


def test_bfloat16_load_keeps_bfloat16(tmp_path):
    ref = make_reference("qwen3")
    save_reference(ref, tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.config.dtype == torch.bfloat16  # a torch.dtype, as transformers 5
    by_name = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="bfloat16")
    assert by_name.dtype == torch.bfloat16
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(model(ids).logits, ref(ids).logits) < 0.1  # bf16 rounding only
    # "auto" reads the saved dtype back
    model.save_pretrained(tmp_path / "bf16")
    assert (
        autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    )


def test_state_dict_and_config_arguments(tmp_path):
    ref = make_reference("llama")
    save_reference(ref, tmp_path)
    config = autolm.AutoConfig.from_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(None, config=config, state_dict=ref.state_dict())
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(model(ids).logits, ref(ids).logits) <= 1e-5
    # config= given as an object overrides the directory's; kwargs override it in turn
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, config=config, output_hidden_states=True)
    assert model.config.output_hidden_states is True and config.output_hidden_states is False
    assert model(ids).hidden_states is not None


def test_model_api(tmp_path):
    ref = make_reference("llama", tie_word_embeddings=True)
    save_reference(ref, tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.float32
    assert model.num_parameters() == ref.num_parameters()
    assert model.get_input_embeddings().weight is model.lm_head.weight
    assert model.config.name_or_path == str(tmp_path)
    out = model(input_ids())
    assert set(out) >= {"logits", "past_key_values"}
    assert out[0] is out.logits
    random = autolm.AutoModelForCausalLM.from_config(model.config)
    assert type(random) is type(model)
    assert random.get_input_embeddings().weight is random.lm_head.weight


def test_user_subclass_with_backbone_from_config(tmp_path):
    """A user's own head on an AutoModel backbone loads the pretrained backbone and names the new head."""
    from torch import nn

    class Scorer(autolm.PreTrainedModel):
        config_class = None  # use AutoConfig
        base_model_prefix = "model"

        def __init__(self, config):
            super().__init__(config)
            self.model = autolm.AutoModel.from_config(config)
            self.head = nn.Linear(config.hidden_size, 1)

        def forward(self, input_ids):
            return self.head(self.model(input_ids).last_hidden_state[:, -1])

    ref = make_reference("qwen2")
    save_reference(ref, tmp_path)
    model, info = Scorer.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == ["head.bias", "head.weight"]
    assert info["unexpected_keys"] == ["lm_head.weight"]
    ids = input_ids()
    with torch.no_grad():
        assert _max_diff(model.model(ids).last_hidden_state, ref.model(ids).last_hidden_state) <= 1e-5
        assert torch.isfinite(model(ids)).all()
    # and the strict option refuses instead of initialising
    with pytest.raises(autolm.errors.CheckpointError, match="head"):
        Scorer.from_pretrained(tmp_path, strict=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_layout_keeps_weights_and_saves_the_same(tmp_path, dtype):
    """generate() re-lays and fuses weights (and drops the checkpoint pages it no longer needs):
    the values, the state_dict names and what save_pretrained writes must not change."""
    from safetensors.torch import load_file

    save_reference(make_reference("qwen2", tie_word_embeddings=True), tmp_path / "src")
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "src", dtype=dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = input_ids(batch=1)
    with torch.no_grad():
        logits = model(ids).logits
    model.generate(ids, max_new_tokens=3)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():  # another matmul layout sums in another order: equal up to rounding
        assert _max_diff(model(ids).logits, logits) <= (1e-5 if dtype == torch.float32 else 1e-2)
    model.save_pretrained(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert set(saved) == set(before) - {"lm_head.weight"}
    assert all(torch.equal(saved[k], before[k]) for k in saved)
