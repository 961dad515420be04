"""A decoder family that lives outside autolm: "tinylm", written the way a user (or a new family file)
writes one, from autolm's public primitives only.

Its own tensor names (`tok_embeddings`, `blocks.N.attn.wq`, `blocks.N.ff.w1`, ...) and a `sanitize`
hook that reads Llama-named checkpoints; a GELU-tanh gated MLP; its own `describe_decoder()`, so the
native decode step runs it. Nothing in autolm's kernels/, generation/ or loader.py knows it exists.
tests/test_family_contract.py checks it against transformers' Llama on the same weights;
bench/family.py measures its decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from autolm import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from autolm.kernels.decoder import Decoder, Layer, Norm, Projection
from autolm.modeling_utils import ModelOutput
from autolm.models.cache import DynamicCache, StaticCache
from autolm.models.heads import causal_lm_loss
from autolm.models.layers import (
    Linear,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    attention,
    attention_masks,
    positions_and_masks,
)


class TinyLMConfig(PretrainedConfig):
    model_type = "tinylm"
    defaults = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }

    def __post_init__(self) -> None:
        self.head_dim = self.hidden_size // self.num_attention_heads


class Attention(nn.Module):
    def __init__(self, config: TinyLMConfig, index: int):
        super().__init__()
        self.index, self.head_dim, self.scaling = index, config.head_dim, config.head_dim**-0.5
        h, d = config.hidden_size, config.head_dim
        self.wq = Linear(h, config.num_attention_heads * d, bias=False)
        self.wk = Linear(h, config.num_key_value_heads * d, bias=False)
        self.wv = Linear(h, config.num_key_value_heads * d, bias=False)
        self.wo = Linear(config.num_attention_heads * d, h, bias=False)

    def forward(self, x, rope, masks, cache):
        B, T, _ = x.shape
        shape = (B, T, -1, self.head_dim)
        q, k = apply_rotary(self.wq(x).view(shape), self.wk(x).view(shape), *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), self.wv(x).view(shape).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.index)
        out = attention(q, k, v, masks["full_attention"], self.scaling, is_causal=True)
        return self.wo(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, config: TinyLMConfig):
        super().__init__()
        self.w1 = Linear(config.hidden_size, config.intermediate_size, bias=False)  # gate
        self.w3 = Linear(config.hidden_size, config.intermediate_size, bias=False)  # up
        self.w2 = Linear(config.intermediate_size, config.hidden_size, bias=False)  # down

    def forward(self, x):
        return self.w2(nn.functional.gelu(self.w1(x), approximate="tanh") * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: TinyLMConfig, index: int):
        super().__init__()
        self.attn, self.ff = Attention(config, index), FeedForward(config)
        self.norm1 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm2 = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rope, masks, cache):
        x = x + self.attn(self.norm1(x), rope, masks, cache)
        return x + self.ff(self.norm2(x))


# Llama checkpoint names -> this family's
_RENAMES = {
    "model.embed_tokens.": "tok_embeddings.",
    "model.norm.": "norm.",
    "lm_head.": "output.",
    "model.layers.": "blocks.",
    ".self_attn.q_proj.": ".attn.wq.",
    ".self_attn.k_proj.": ".attn.wk.",
    ".self_attn.v_proj.": ".attn.wv.",
    ".self_attn.o_proj.": ".attn.wo.",
    ".mlp.gate_proj.": ".ff.w1.",
    ".mlp.up_proj.": ".ff.w3.",
    ".mlp.down_proj.": ".ff.w2.",
    ".input_layernorm.": ".norm1.",
    ".post_attention_layernorm.": ".norm2.",
}


class TinyLMForCausalLM(PreTrainedModel):
    config_class = TinyLMConfig
    base_model_prefix = ""

    def __init__(self, config: TinyLMConfig):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.output = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config)

    def sanitize(self, state_dict):
        renamed = {}
        for name, tensor in state_dict.items():
            for old, new in _RENAMES.items():
                name = name.replace(old, new)
            renamed[name] = tensor
        return renamed

    def get_input_embeddings(self):
        return self.tok_embeddings

    def get_output_embeddings(self):
        return self.output

    def make_cache(self, batch_size: int, max_cache_len: int | None = None, dtype=None, device=None):
        if max_cache_len is None:
            return DynamicCache()
        return StaticCache(self.config, batch_size, max_cache_len, dtype=dtype or self.output.weight.dtype)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, labels=None, logits_to_keep=0, cache_position=None, **kwargs):  # fmt: skip
        x = self.tok_embeddings(input_ids)
        B, T = input_ids.shape
        cache = past_key_values
        if cache is None and (use_cache if use_cache is not None else self.config.use_cache):
            cache = self.make_cache(B)
        position_ids, masks = positions_and_masks(
            self.config, attention_mask, position_ids, cache, cache_position, B, T, x.device
        )
        rope = self.rope(x, position_ids)
        for block in self.blocks:
            x = block(x, rope, masks, cache)
        x = self.norm(x)
        logits = self.output(x[:, -logits_to_keep:] if logits_to_keep else x)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits, past_key_values=cache)

    def describe_decoder(self) -> Decoder | None:
        if type(self).forward is not TinyLMForCausalLM.forward:
            return None

        def norm(n: RMSNorm) -> Norm:
            return Norm(n.weight, n.variance_epsilon)

        c = self.config
        layers = [
            Layer(
                attn_norm=norm(b.norm1),
                q=Projection(b.attn.wq.weight),
                k=Projection(b.attn.wk.weight),
                v=Projection(b.attn.wv.weight),
                o=Projection(b.attn.wo.weight),
                mlp_norm=norm(b.norm2),
                gate=Projection(b.ff.w1.weight),
                up=Projection(b.ff.w3.weight),
                down=Projection(b.ff.w2.weight),
                activation="gelu_pytorch_tanh",
                scaling=b.attn.scaling,
            )
            for b in self.blocks
        ]
        return Decoder(
            layers=layers,
            hidden=c.hidden_size,
            heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
            intermediate=c.intermediate_size,
            rotary_dim=c.head_dim,
            embed=self.tok_embeddings,
            rotary=self.rope,
            masks=lambda mask, past, kv_len, slots: attention_masks(
                c, mask, past, 1, kv_len, torch.device("cpu"), slots
            ),
            head=lambda x: self.output(self.norm(x)),
            modules=list(self.modules()),
        )


def register() -> None:
    AutoConfig.register("tinylm", TinyLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(TinyLMConfig, TinyLMForCausalLM, exist_ok=True)


def write_checkpoint(directory, seed: int = 0, **config):
    """A Llama checkpoint written by transformers with GELU-tanh, relabelled "tinylm"; returns the
    transformers model (the reference)."""
    import json

    import transformers

    keys = {**TinyLMConfig.defaults, **config}
    ref_config = transformers.LlamaConfig(**keys, hidden_act="gelu_pytorch_tanh", attention_bias=False)
    torch.manual_seed(seed)
    ref = transformers.LlamaForCausalLM(ref_config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2 if keys["hidden_size"] < 256 else 0.02)
    ref.save_pretrained(directory)
    path = directory / "config.json"
    data = json.loads(path.read_text())
    data.update(model_type="tinylm", architectures=["TinyLMForCausalLM"])
    path.write_text(json.dumps(data))
    return ref
