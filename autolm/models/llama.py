"""Llama family: Llama 2/3/3.x, Vicuna, TinyLlama, SmolLM.

Defaults -> attention -> MLP -> decoder layer -> base model -> task heads. Qwen2 and Qwen3 reuse these
blocks and swap in their own attention (see qwen2.py, qwen3.py); Mistral reuses them as they are
(mistral.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import PretrainedConfig
from ..kernels.decoder import Decoder, Layer
from ..modeling_utils import ModelOutput, PreTrainedModel
from .heads import CausalLMHead, SequenceClassificationHead
from .layers import (
    Linear,
    RMSNorm,
    RotaryEmbedding,
    activation,
    apply_rotary,
    attention,
    attention_masks,
    check_activation,
    positions_and_masks,
    projection,
    rms_norm,
    same_code,
)
from .stack import CacheMaker, StackRun


class LlamaConfig(PretrainedConfig):
    model_type = "llama"
    defaults = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": None,
        "head_dim": None,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
    }

    # transformers' Llama attends fully in every layer, whatever `sliding_window` or `layer_types` say
    _reads_layer_types = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        check_activation(self)


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_type = config.layer_types[layer_idx]
        self.make_projections(config)

    def make_projections(self, config: LlamaConfig) -> None:
        h, d, bias = config.hidden_size, self.head_dim, config.attention_bias
        self.q_proj = Linear(h, config.num_attention_heads * d, bias=bias)
        self.k_proj = Linear(h, config.num_key_value_heads * d, bias=bias)
        self.v_proj = Linear(h, config.num_key_value_heads * d, bias=bias)
        self.o_proj = Linear(config.num_attention_heads * d, h, bias=bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, T, heads, head_dim)."""
        B, T, _ = x.shape
        shape = (B, T, -1, self.head_dim)
        return self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head normalisation before rotary; none in Llama (see Qwen3)."""
        return q, k

    def forward(self, x, position_embeddings, masks, cache, attentions: list | None = None) -> torch.Tensor:
        """`attentions`: a list to append this layer's attention probabilities to (output_attentions)."""
        B, T, _ = x.shape
        q, k, v = self.project(x)
        q, k = apply_rotary(*self.norm_qk(q, k), *position_embeddings)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        mask = masks[self.attention_type]
        impl = self.config._attn_implementation
        if attentions is not None:
            out, probs = attention(q, k, v, mask, self.scaling, impl, is_causal=True, output_weights=True)
            attentions.append(probs)
        else:
            out = attention(q, k, v, mask, self.scaling, impl, is_causal=True)
        return self.o_proj(out.reshape(B, T, -1))


def norm_qk_per_head(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm_qk` of families with an RMSNorm over each query and key head (`q_norm`, `k_norm`; Qwen3)."""
    return self.q_norm(q), self.k_norm(k)


class LlamaMLP(nn.Module):
    """down(act(gate(x)) * up(x)); also each expert of the MoE families, at their `intermediate_size`."""

    def __init__(self, config: LlamaConfig, intermediate_size: int | None = None):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        inter = intermediate_size or config.intermediate_size
        self.gate_proj = Linear(config.hidden_size, inter, bias=bias)
        self.up_proj = Linear(config.hidden_size, inter, bias=bias)
        self.down_proj = Linear(inter, config.hidden_size, bias=bias)
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__()
        self.self_attn = attention_class(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, position_embeddings, masks, cache, attentions: list | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_embeddings, masks, cache, attentions)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    attention_class: type[nn.Module] = LlamaAttention
    decoder_layer_class: type[nn.Module] = LlamaDecoderLayer  # MoE families build their own layers


class LlamaModel(CacheMaker, LlamaPreTrainedModel):
    """The decoder stack; returns `last_hidden_state` (and `past_key_values`, `hidden_states`)."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            self.decoder_layer_class(config, i, self.attention_class) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        run = StackRun.start(
            self,
            input_ids,
            inputs_embeds,
            past_key_values,
            use_cache,
            output_hidden_states,
            output_attentions,
            kwargs,
        )
        x = run.x
        position_ids, masks = positions_and_masks(
            self.config, attention_mask, position_ids, run.cache, cache_position, *x.shape[:2], x.device
        )
        position_embeddings = self.rotary_emb(x, position_ids)
        return run.finish(x, self.layers, (position_embeddings, masks), self.norm, return_dict)


def dense_mlp(mlp) -> dict | None:
    """The native step's description of a gated MLP (LlamaMLP or a family's own with the same code and
    names), or None when its code differs."""
    if not (
        same_code(mlp, LlamaMLP, "forward")
        and all(same_code(m, Linear, "forward") for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    ):
        return None
    return dict(gate=projection(mlp.gate_proj), up=projection(mlp.up_proj), down=projection(mlp.down_proj))


def describe_stack(
    model, head_cls: type, base_cls: type, layer_cls: type, describe_mlp=dense_mlp
) -> Decoder | None:
    """The native decode step's description of a Llama-shaped causal LM: `model` must run `head_cls`'s
    forward, its base `base_cls`'s, every layer `layer_cls`'s; `describe_mlp(layer.mlp)` gives the MLP's part
    of the layer (dense, or a mixture of experts), None when it has none. None when a module's code differs
    from these files' (a user subclass that overrides a forward runs its own code)."""
    base = model.base_model
    c = model.config
    if not (
        same_code(model, head_cls, "forward")
        and same_code(base, base_cls, "forward")
        and same_code(base.norm, RMSNorm, "forward")
        and same_code(model.lm_head, Linear, "forward")
        and not c.output_hidden_states
        and not c.output_attentions
        and c.hidden_act in ("silu", "swish", "gelu_pytorch_tanh", "relu", "gelu")
    ):
        return None
    layers = []
    for layer in base.layers:
        attn = layer.self_attn
        qk_norms = type(attn).norm_qk is norm_qk_per_head
        mlp = describe_mlp(layer.mlp)
        if not (
            mlp is not None
            and same_code(layer, layer_cls, "forward")
            and same_code(attn, LlamaAttention, "forward", "project")
            and type(attn).norm_qk in (LlamaAttention.norm_qk, norm_qk_per_head)
            and all(
                same_code(m, Linear, "forward") for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
            )
            and all(
                same_code(n, RMSNorm, "forward")
                for n in (layer.input_layernorm, layer.post_attention_layernorm)
            )
            and (not qk_norms or all(same_code(n, RMSNorm, "forward") for n in (attn.q_norm, attn.k_norm)))
        ):
            return None
        layers.append(
            Layer(
                attn_norm=rms_norm(layer.input_layernorm),
                q=projection(attn.q_proj),
                k=projection(attn.k_proj),
                v=projection(attn.v_proj),
                o=projection(attn.o_proj),
                mlp_norm=rms_norm(layer.post_attention_layernorm),
                activation=c.hidden_act,
                q_norm=rms_norm(attn.q_norm) if qk_norms else None,
                k_norm=rms_norm(attn.k_norm) if qk_norms else None,
                scaling=attn.scaling,
                attention_type=attn.attention_type,
                **mlp,
            )
        )
    return Decoder(
        layers=layers,
        hidden=c.hidden_size,
        heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads,
        head_dim=base.layers[0].self_attn.head_dim,
        intermediate=c.intermediate_size,
        rotary_dim=base.layers[0].self_attn.head_dim,
        embed=base.embed_tokens,
        rotary=base.rotary_emb,
        masks=lambda mask, past, kv_len, cache_position: attention_masks(
            c, mask, past, 1, kv_len, base.embed_tokens.weight.device, cache_position
        ),
        head=lambda x: model.lm_head(base.norm(x)),
        modules=list(model.modules()),
    )


class LlamaForCausalLM(CausalLMHead, LlamaPreTrainedModel):
    def describe_decoder(self) -> Decoder | None:
        """The native decode step's description of this model (None when a module's code differs from
        this file's: a user subclass that overrides a forward runs its own code)."""
        return describe_stack(self, LlamaForCausalLM, LlamaModel, LlamaDecoderLayer)


class LlamaForSequenceClassification(SequenceClassificationHead, LlamaPreTrainedModel):
    pass


LlamaPreTrainedModel.base_model_class = LlamaModel
