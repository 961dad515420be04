"""GPT-2 (gpt2, distilgpt2, gpt2-medium shapes and options) against transformers: logits, hidden
states, every head's loss, generation (greedy, seeded sampling, beams) on the native decode step, and
checkpoints both ways."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import autolm
from autolm.errors import AutolmValueError

TINY = dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0)
VARIANTS = {
    "gpt2": {},
    "inverse_layer_idx": dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "unscaled_relu_inner": dict(scale_attn_weights=False, activation_function="relu", n_inner=40),
    "exact_gelu_eps": dict(activation_function="gelu", layer_norm_epsilon=1e-3),
}


def reference(variant: str = "gpt2", cls=transformers.GPT2LMHeadModel, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**TINY, **VARIANTS[variant], **overrides})
    return cls(config).eval()


def saved(tmp_path, ref, name: str = "gpt2"):
    ref.save_pretrained(tmp_path / name)
    return tmp_path / name


def batch(seed: int = 0, length: int = 9):
    ids = torch.randint(1, TINY["vocab_size"], (3, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_hidden_states_match_transformers(tmp_path, variant):
    ref = reference(variant)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, ref), output_loading_info=True)
    assert type(model) is autolm.GPT2LMHeadModel
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch()
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, output_hidden_states=True)
        b = model(ids, attention_mask=mask, output_hidden_states=True)
    assert max_diff(a.logits, b.logits, mask) <= 1e-5
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert max_diff(x, y, mask) <= 1e-5


def test_eager_reordered_upcast_attention_and_attention_weights_match(tmp_path):
    ref = reference(reorder_and_upcast_attn=True, attn_implementation="eager")
    model = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, ref), attn_implementation="eager")
    ids, mask = batch(1)
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, output_attentions=True)
        b = model(ids, attention_mask=mask, output_attentions=True)
    assert max_diff(a.logits, b.logits, mask) <= 1e-5
    for x, y in zip(a.attentions, b.attentions):
        assert max_diff(x.transpose(1, 2), y.transpose(1, 2), mask) <= 1e-5  # rows of real queries


def test_base_model_token_types_and_the_config_argument(tmp_path):
    """`from_pretrained(path, config=GPT2Config(...))` as the articles write it, token_type_ids included."""
    ref = reference(cls=transformers.GPT2Model)
    directory = saved(tmp_path, ref)
    config = autolm.GPT2Config.from_pretrained(directory)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    model = autolm.AutoModel.from_pretrained(directory, config=config)
    assert type(model) is autolm.GPT2Model
    ids, mask = batch(2)
    types = torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        b = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(a, b, mask) <= 1e-5


def test_config_keeps_gpt2_names_and_every_key(tmp_path):
    ref = reference(summary_type="mean", n_inner=40)
    directory = saved(tmp_path, ref)
    config = autolm.AutoConfig.from_pretrained(directory, n_layer=3)
    assert type(config) is autolm.GPT2Config and config.num_hidden_layers == 3
    config.save_pretrained(tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    original = json.loads((directory / "config.json").read_text())
    assert written["n_layer"] == 3 and "num_hidden_layers" not in written
    for key in original.keys() - {"n_layer", "transformers_version", "dtype", "torch_dtype"}:
        assert written[key] == original[key], key


def test_lm_loss_matches(tmp_path):
    ref = reference()
    model = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, ref))
    ids, mask = batch(4)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, labels=labels).loss
        b = model(ids, attention_mask=mask, labels=labels).loss
    assert abs(a.item() - b.item()) <= 1e-5


@pytest.mark.parametrize(
    "problem, labels",
    [
        ("single_label_classification", torch.tensor([0, 2, 1])),
        ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0]])),
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.4]])),
    ],
)
def test_sequence_classification_losses_match(tmp_path, problem, labels):
    ref = reference(cls=transformers.GPT2ForSequenceClassification, num_labels=3, problem_type=problem)
    model = autolm.AutoModelForSequenceClassification.from_pretrained(saved(tmp_path, ref))
    assert type(model) is autolm.GPT2ForSequenceClassification
    ids, mask = batch(5)
    ids = ids.flip(-1)  # right padding: the last real token is found by pad_token_id
    mask = mask.flip(-1)
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, labels=labels)
        b = model(ids, attention_mask=mask, labels=labels)
    assert (a.logits - b.logits).abs().max().item() <= 1e-5
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


def test_token_classification_matches(tmp_path):
    ref = reference(cls=transformers.GPT2ForTokenClassification, num_labels=5)
    model = autolm.AutoModelForTokenClassification.from_pretrained(saved(tmp_path, ref))
    ids, mask = batch(6)
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(1))
    labels[mask == 0] = -100
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, labels=labels)
        b = model(ids, attention_mask=mask, labels=labels)
    assert max_diff(a.logits, b.logits, mask) <= 1e-5
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


GENERATE = {
    "greedy": dict(do_sample=False, max_new_tokens=16),
    "sampled": dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=16),
    "beams": dict(num_beams=3, num_return_sequences=2, max_new_tokens=12, length_penalty=0.7),
}


@pytest.mark.parametrize("kind", GENERATE)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generation_matches_transformers_on_the_native_step(tmp_path, kind, cache, native_steps):
    ref = reference("inverse_layer_idx")
    model = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, ref))
    ids, mask = batch(7, length=6)
    args = dict(attention_mask=mask, eos_token_id=None, pad_token_id=0, **GENERATE[kind])
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    torch.manual_seed(11)
    expected = ref.generate(ids, **args)
    torch.manual_seed(11)
    got = model.generate(ids, **args, **extra)
    assert got.tolist() == expected.tolist()
    assert native_steps or kind == "beams"  # sampling and greedy decode on the native step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_step_computes_what_the_torch_forward_does(tmp_path, dtype, native_kernels):
    """One decode step through the C kernel equals the family's own forward (its Conv1D layout read in
    place, column slices of c_attn included)."""
    from autolm.kernels.decoder import native_decoder

    model = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, reference()), dtype=dtype)
    ids, mask = batch(8, length=5)
    with torch.no_grad():
        cache = model.make_cache(3)
        model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        token = torch.tensor([5, 7, 9])
        full = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
        position = (full.cumsum(-1) - 1)[:, -1:]
        import copy

        torch_cache = copy.deepcopy(cache)
        expected = model(
            token[:, None], attention_mask=full, position_ids=position, past_key_values=torch_cache
        ).logits[:, -1]
        got = native_decoder(model).step(token, position, full, cache)
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    assert (got - expected.float()).abs().max().item() <= tolerance


def test_save_pretrained_loads_in_transformers(tmp_path):
    ref = reference()
    model = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, ref))
    model.save_pretrained(tmp_path / "ours")
    back, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask = batch(9)
    with torch.no_grad():
        assert (
            max_diff(back(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, mask)
            <= 1e-5
        )


def test_hub_layout_checkpoint_with_mask_buffers_loads(tmp_path):
    """The Hub's gpt2 files name tensors without `transformer.` and carry the old `attn.bias` buffers."""
    from safetensors.torch import save_file

    ref = reference()
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in ref.state_dict().items()}
    state.pop("lm_head.weight")
    for i in range(TINY["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    directory = tmp_path / "hub"
    directory.mkdir()
    save_file(state, directory / "model.safetensors")
    ref.config.save_pretrained(directory)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch(10)
    with torch.no_grad():
        assert (
            max_diff(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, mask)
            <= 1e-5
        )


def test_positions_past_n_positions_say_so(tmp_path):
    model = autolm.AutoModelForCausalLM.from_pretrained(saved(tmp_path, reference()))
    with pytest.raises(AutolmValueError, match="n_positions"):
        model(torch.ones(1, 65, dtype=torch.long))
