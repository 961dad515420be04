"""Per-layer attention: `config.layer_types` (explicit or derived from legacy keys as transformers
derives them), one mask per type, each layer its own; against transformers, with the dynamic and the
static cache, the native decode step on and off."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

import autolm
from autolm.generation import loop

# Each case: transformers' config class, its causal LM, and the config keys that set the windows.
CASES = {
    # window on layers from max_window_layers on only (here: layers 1 and 2 of 3)
    "qwen2-max-window-layers": (
        "Qwen2",
        {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1, "num_hidden_layers": 3},
    ),
    # every layer slides over a window shorter than the sequence
    "mistral-window": ("Mistral", {"sliding_window": 5}),
    # an explicit list, sliding in the middle layer only
    "qwen3-layer-types": (
        "Qwen3",
        {
            "use_sliding_window": True,
            "sliding_window": 3,
            "num_hidden_layers": 3,
            "head_dim": 16,
            "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        },
    ),
}


def _write(tmp_path, case: str):
    import transformers

    prefix, keys = CASES[case]
    config = getattr(transformers, f"{prefix}Config")(**{**TINY, "max_position_embeddings": 128, **keys})
    torch.manual_seed(0)
    ref = getattr(transformers, f"{prefix}ForCausalLM")(config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    ref.save_pretrained(tmp_path / case)
    return tmp_path / case, ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_types_derived_as_transformers(tmp_path, case):
    directory, ref = _write(tmp_path, case)
    ours = autolm.AutoConfig.from_pretrained(directory)
    # transformers' Mistral has no layer_types: every layer slides when sliding_window is set
    expected = (
        getattr(ref.config, "layer_types", None) or ["sliding_attention"] * ref.config.num_hidden_layers
    )
    assert ours.layer_types == list(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    directory, ref = _write(tmp_path, case)
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.randint(1, 96, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (got[keep] - expected[keep]).abs().max().item() <= 1e-5
    # the windows matter here: without them the logits differ
    plain = autolm.AutoModelForCausalLM.from_pretrained(
        directory,
        layer_types=["full_attention"] * len(model.model.layers),
        sliding_window=None,
        use_sliding_window=False,
    )
    with torch.no_grad():
        assert (plain(ids, attention_mask=mask).logits[keep] - expected[keep]).abs().max().item() > 1e-3


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_tokens_match_transformers(tmp_path, case, cache, native, monkeypatch, request):
    directory, ref = _write(tmp_path, case)
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    args = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = ref.generate(ids, **args)
    calls = request.getfixturevalue("native_steps") if native else []
    if not native:
        monkeypatch.setattr(loop, "native_decoder", lambda model: None)
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    got = model.generate(ids, **args, **kwargs)
    assert torch.equal(got, expected)
    assert len(calls) == (15 if native else 0)
