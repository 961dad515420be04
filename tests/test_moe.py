"""Qwen3-MoE and Qwen2-MoE against transformers 5 on the same tiny random weights: logits and greedy ids
(dense layers mixed in, top-k weights renormalised or not, padded batches), router logits, the
load-balancing loss, the checkpoint layouts experts come in (the Hub's per-expert tensors, transformers
5's fused ones, GGUF's 3-D ffn_*_exps), save_pretrained read back by transformers, and that a token
runs only the experts it was routed to."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_gguf import Q, write_gguf

import autolm

FAMILIES = ("qwen3_moe", "qwen2_moe")
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts=8,
    num_experts_per_tok=3,
    max_position_embeddings=128,
    rope_theta=50000.0,
)
# dense layers mixed in both ways transformers allows: listed, and every other layer
LAYOUTS = {"mlp_only_layers": dict(mlp_only_layers=[1]), "sparse_step": dict(decoder_sparse_step=2)}


def reference(family: str, **overrides):
    """A transformers model with random weights (norms perturbed, so that they matter)."""
    import transformers

    if family == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(**(TINY | {"head_dim": 24} | overrides))
        model_class = transformers.Qwen3MoeForCausalLM
    else:
        config = transformers.Qwen2MoeConfig(**(TINY | {"shared_expert_intermediate_size": 64} | overrides))
        model_class = transformers.Qwen2MoeForCausalLM
    torch.manual_seed(0)
    model = model_class(config).eval()
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


CASES = [(f, layout, norm) for f in FAMILIES for layout in LAYOUTS for norm in (False, True)]


@pytest.mark.parametrize("family,layout,norm", CASES, ids=[f"{f}-{lay}-norm{int(n)}" for f, lay, n in CASES])
def test_logits_and_greedy_ids_match_transformers(tmp_path, family, layout, norm, native_steps):
    ref = reference(family, norm_topk_prob=norm, **LAYOUTS[layout])
    ref.save_pretrained(tmp_path)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model).__name__ == type(ref).__name__
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    sparse = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert sparse == ([0, 2, 3] if layout == "mlp_only_layers" else [1, 3])
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
    args = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(ids, **args), ref.generate(ids, **args))
    assert len(native_steps) == 15  # the decode steps ran on the native step, routing in C


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_step_computes_what_the_torch_forward_does(tmp_path, family, dtype, native_kernels):
    """One decode step of a batch of rows that chose different experts, through the C kernel, equals
    the family's torch forward (float32 to 1e-5; bfloat16 rounds at the same points)."""
    import copy

    from autolm.kernels.decoder import native_decoder

    reference(family, mlp_only_layers=[1]).save_pretrained(tmp_path)
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


@pytest.mark.parametrize("family", FAMILIES)
def test_router_logits_and_aux_loss_match_transformers(tmp_path, family):
    ref = reference(family, mlp_only_layers=[2], router_aux_loss_coef=0.02)
    ref.save_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask, labels=labels, output_router_logits=True)
        got = model(ids, attention_mask=mask, labels=labels, output_router_logits=True)
        unmasked = (ref(ids, output_router_logits=True), model(ids, output_router_logits=True))
        plain = model(ids, attention_mask=mask)
    assert len(got.router_logits) == len(want.router_logits) == 3  # one per sparse layer
    for ours, theirs in zip(got.router_logits, want.router_logits):
        assert ours.shape == theirs.shape == (18, TINY["num_experts"])
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.aux_loss, want.aux_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmasked[1].aux_loss, unmasked[0].aux_loss, atol=1e-6, rtol=0)
    assert plain.aux_loss is None and plain.router_logits is None  # only when asked for
    # the config's switch asks as well
    model.config.output_router_logits = True
    with torch.no_grad():
        assert len(model(ids, attention_mask=mask).router_logits) == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_loads_in_transformers(tmp_path, family):
    import transformers

    ref = reference(family, mlp_only_layers=[0], norm_topk_prob=True)
    ref.save_pretrained(tmp_path / "ref")
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
    model.save_pretrained(tmp_path / "ours")
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", dtype=torch.float32, output_loading_info=True
    )
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(theirs).__name__ == type(ref).__name__
    assert theirs.config.num_experts == TINY["num_experts"] and theirs.config.mlp_only_layers == [0]
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, theirs.eval()(ids, attention_mask=mask).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_expert_layout_loads(tmp_path, family):
    """transformers 5 holds experts fused (`experts.gate_up_proj` (E, 2I, H), `experts.down_proj`); a
    checkpoint written from its state_dict as it is loads the same."""
    ref = reference(family)
    ref.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    (tmp_path / "model.safetensors").unlink()
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = autolm.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_a_token_runs_only_its_experts(tmp_path, family):
    reference(family).save_pretrained(tmp_path)
    model = autolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    calls: list[tuple[int, int, int]] = []  # (layer, expert, rows)
    for i, layer in enumerate(model.model.layers):
        for e, expert in enumerate(layer.mlp.experts):
            expert.register_forward_hook(lambda m, x, y, i=i, e=e: calls.append((i, e, x[0].shape[0])))
    ids, _ = batch()
    with torch.no_grad():
        out = model(ids[:1, :1], output_router_logits=True)
    chosen = [
        set(logits.topk(TINY["num_experts_per_tok"]).indices[0].tolist()) for logits in out.router_logits
    ]
    assert sorted(calls) == sorted((i, e, 1) for i, experts in enumerate(chosen) for e in experts)
    calls.clear()
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    # a prompt: each expert runs once per layer, on exactly the rows routed to it
    for i, logits in enumerate(out.router_logits):
        counts = torch.bincount(logits.topk(TINY["num_experts_per_tok"]).indices.reshape(-1), minlength=8)
        assert sorted((e, n) for layer, e, n in calls if layer == i) == [
            (e, n) for e, n in enumerate(counts.tolist()) if n
        ]


def test_config_reads_both_spellings_of_the_expert_count(tmp_path):
    reference("qwen3_moe").save_pretrained(tmp_path)
    assert "num_local_experts" in json.loads((tmp_path / "config.json").read_text())  # transformers 5's
    config = autolm.AutoConfig.from_pretrained(tmp_path)
    assert config.num_experts == config.num_local_experts == TINY["num_experts"]
    hub = autolm.AutoConfig.for_model("qwen3_moe", num_experts=16)  # the Hub's spelling
    assert hub.num_local_experts == 16


# --- GGUF -------------------------------------------------------------------------------------------

_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}


def write_moe_gguf(path, family: str, model, qtype: Q):
    """The model as llama.cpp's converter writes it: experts stacked into 3-D ffn_*_exps tensors."""
    c = model.config
    arch = family.replace("_", "")
    metadata = {
        f"{arch}.context_length": c.max_position_embeddings,
        f"{arch}.embedding_length": c.hidden_size,
        f"{arch}.block_count": c.num_hidden_layers,
        f"{arch}.feed_forward_length": c.intermediate_size,
        f"{arch}.attention.head_count": c.num_attention_heads,
        f"{arch}.attention.head_count_kv": c.num_key_value_heads,
        f"{arch}.rope.freq_base": float(c.rope_parameters["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
        f"{arch}.vocab_size": c.vocab_size,
        f"{arch}.expert_count": c.num_experts,
        f"{arch}.expert_used_count": c.num_experts_per_tok,
        f"{arch}.expert_feed_forward_length": c.moe_intermediate_size,
    }
    if family == "qwen3_moe":
        metadata[f"{arch}.attention.key_length"] = c.head_dim
        metadata[f"{arch}.attention.value_length"] = c.head_dim
    else:
        metadata[f"{arch}.expert_shared_feed_forward_length"] = c.shared_expert_intermediate_size
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().float().numpy()
        stem, suffix = name.rsplit(".", 1) if name.endswith((".weight", ".bias")) else (name, "weight")
        if stem in _TOP:
            gguf = f"{_TOP[stem]}.{suffix}"
        else:
            _, _, layer, rest = stem.split(".", 3)
            if rest == "mlp.experts.gate_up_proj":  # transformers' fused (E, 2I, H): gate rows first
                gate, up = np.split(value, 2, axis=1)
                tensors[f"blk.{layer}.ffn_gate_exps.weight"] = (gate, qtype)
                tensors[f"blk.{layer}.ffn_up_exps.weight"] = (up, qtype)
                continue
            kind = "ffn_down_exps" if rest == "mlp.experts.down_proj" else _LAYER[rest]
            gguf = f"blk.{layer}.{kind}.{suffix}"
        # llama.cpp keeps 1-D tensors (norms, biases) and the (1, hidden) shared-expert gate in F32
        small = value.ndim == 1 or value.shape[0] == 1
        tensors[gguf] = (value, Q.F32 if small else qtype)
    return write_gguf(path, arch, metadata, tensors)


GGUF_CASES = [(f, q) for f in FAMILIES for q in (Q.F32, Q.Q8_0)]


@pytest.mark.parametrize("family,qtype", GGUF_CASES, ids=[f"{f}-{q.name}" for f, q in GGUF_CASES])
def test_gguf_round_trip(tmp_path, family, qtype):
    from gguf import quants

    ref = reference(family, mlp_only_layers=[1], norm_topk_prob=family == "qwen3_moe")
    path = write_moe_gguf(tmp_path / "m.gguf", family, ref, qtype)
    if qtype != Q.F32:  # the reference gets the weights the file holds
        with torch.no_grad():
            for param in ref.parameters():
                if param.dim() >= 2 and param.shape[-2] != 1:
                    data = param.detach().numpy()
                    param.copy_(torch.from_numpy(quants.dequantize(quants.quantize(data, qtype), qtype)))
    model = autolm.AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == type(ref).__name__
    assert model.config.mlp_only_layers == [1] and model.config.num_experts == TINY["num_experts"]
    ids, mask = batch()
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5
