"""After `generate` the model is still the user's: replaced weights are used, every parameter gets its
gradient (equal to transformers'), and `.to(torch.bfloat16)` converts each weight once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAMILIES
from generation_helpers import write_model
from torch import nn

import autolm


def _generate(model, ids):
    return model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_replaced_weights_are_used_after_generate(tmp_path, family):
    import transformers

    directory = write_model(tmp_path / family, family)
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.randint(3, 96, (1, 5), generator=torch.Generator().manual_seed(0))
    _generate(model, ids)
    torch.manual_seed(1)
    for ours, theirs in ((model, ref),):
        names = ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
        names += ("self_attn.qkv_proj", "mlp.gate_up_proj")  # Phi-3's fused projections
        layer = ours.get_submodule("model.layers.0")
        # the projections this family's layer 0 has (an MoE layer 0 has experts, no mlp.*_proj)
        for name in [n for n in names if hasattr(layer.get_submodule(n.split(".")[0]), n.split(".")[1])]:
            new = torch.randn_like(ours.get_submodule(f"model.layers.0.{name}").weight)
            ours.get_submodule(f"model.layers.0.{name}").weight = nn.Parameter(new.clone())
            theirs.get_submodule(f"model.layers.0.{name}").weight = nn.Parameter(new.clone())
    for length in (1, 3, 40):  # one token, a short prompt (native products), a long one
        x = torch.randint(3, 96, (2, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            assert (model(x).logits - ref(x).logits).abs().max().item() <= 1e-5
    # and generation itself reads the new weights
    assert torch.equal(_generate(model, ids), _generate(ref, ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_equal_transformers_after_generate(tmp_path, family):
    import transformers

    directory = write_model(tmp_path / family, family)
    model = autolm.AutoModelForCausalLM.from_pretrained(directory)
    ref = transformers.AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    _generate(model, ids[:1])
    model.train()
    ref.train()
    loss = model(ids, labels=ids).loss
    expected = ref(ids, labels=ids).loss
    loss.backward()
    expected.backward()
    assert abs(loss.item() - expected.item()) <= 1e-5
    theirs = dict(ref.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    if "moe" in family:  # transformers 5 fuses the experts into one parameter; compare the rest
        names = [n for n in names if n in theirs]
        assert len(names) > len(theirs) // 2
    else:
        assert sorted(names) == sorted(theirs)
    ours = dict(model.named_parameters())
    for name in names:
        p = ours[name]
        assert p.grad is not None, f"{name} got no gradient"
        g = theirs[name].grad
        assert (p.grad - g).abs().max().item() <= 1e-5 * max(1.0, g.abs().max().item()), name


def test_to_bfloat16_after_generate_converts_each_weight_once(tmp_path):
    # a model large enough that its weights dominate RSS: hidden 512, 4 layers, vocab 32000 (~58M params)
    directory = tmp_path / "m"
    script = textwrap.dedent(
        f"""
        import gc, resource, torch, transformers
        torch.manual_seed(0)
        c = transformers.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536,
                                     num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
        transformers.LlamaForCausalLM(c).save_pretrained({str(directory)!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    probe = textwrap.dedent(
        """
        import gc, sys, torch, autolm
        from autolm import kernels

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096

        kernels.ensure_loaded(compile=False)
        start = rss()
        dtype = torch.float32 if sys.argv[2] == "to" else torch.bfloat16
        model = autolm.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype)
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
        if sys.argv[2] == "to":
            model = model.to(torch.bfloat16)
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
        gc.collect()
        print(rss() - start, sum(p.numel() * p.element_size() for p in model.parameters()))
        """
    )

    def growth(how: str) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", probe, str(directory), how], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return tuple(map(int, done.stdout.split()))

    direct, bf16 = growth("direct")  # loaded as bfloat16 in the first place
    converted, _ = growth("to")  # float32, generate, .to(bfloat16), generate
    print(
        f"RSS growth: bf16 load {direct / 2**20:.0f} MB, fp32 + generate + .to(bf16) {converted / 2**20:.0f} MB"
    )
    # the float32 weights are gone: the converted model holds what a bfloat16 load holds
    assert converted <= direct + 0.1 * bf16, (converted, direct, bf16)
