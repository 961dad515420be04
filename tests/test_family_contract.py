"""The family contract: a decoder family defined outside autolm (tests/custom_family.py) registers
through the public API, loads (its `sanitize` reads Llama names), matches transformers and decodes on
the native fast path; the registry lists each family's real tasks."""

from __future__ import annotations

import pytest
import torch
from custom_family import TinyLMForCausalLM, register, write_checkpoint

import autolm
from autolm import models
from autolm.errors import UnsupportedModelError


@pytest.fixture
def checkpoint(tmp_path):
    register()
    ref = write_checkpoint(tmp_path / "tinylm")
    return tmp_path / "tinylm", ref


def test_new_family_loads_and_matches_its_reference(checkpoint):
    directory, ref = checkpoint
    model, info = autolm.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert type(model) is TinyLMForCausalLM
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids = torch.randint(1, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits
    assert (got - expected)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_new_family_decodes_on_the_native_step(checkpoint, cache, native_steps):
    directory, ref = checkpoint
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.randint(1, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    args = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    assert torch.equal(model.generate(ids, **args, **kwargs), ref.generate(ids, **args))
    assert len(native_steps) == 19


def test_a_family_without_a_description_runs_its_torch_code(checkpoint, monkeypatch):
    directory, ref = checkpoint

    class Described(TinyLMForCausalLM):
        def forward(self, *args, **kwargs):  # its own code: the native step must not stand in for it
            return super().forward(*args, **kwargs)

    model = Described.from_pretrained(directory)
    assert model.describe_decoder() is None
    ids = torch.randint(1, 256, (1, 5), generator=torch.Generator().manual_seed(2))
    args = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(ids, **args), ref.generate(ids, **args))


def test_the_registry_names_the_tasks_a_family_has():
    for model_type in models.supported_model_types():
        for task in models.tasks_of(model_type):
            assert models.get_class(model_type, task).__name__ in models.MODELS[model_type]["tasks"].values()
        assert models.get_class(model_type, "config").model_type == model_type
    with pytest.raises(
        UnsupportedModelError, match="its tasks are: base, causal_lm, sequence_classification"
    ):
        models.get_class("llama", "question_answering")


def test_architectures_come_from_the_same_table():
    table = models.architectures()
    assert table["Qwen2ForCausalLM"] == "qwen2" and table["MistralForCausalLM"] == "mistral"
    for entry in models.MODELS.values():
        for name in entry["tasks"].values():
            assert models.canonical_model_type(table[name]) is not None
