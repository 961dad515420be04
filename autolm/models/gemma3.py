"""Gemma 3 (text): Gemma3TextConfig, Gemma3TextModel, Gemma3ForCausalLM.

Defaults -> norm, embeddings, rotary -> attention -> MLP -> decoder layer -> base model -> task heads.
Llama's attention and MLP code with Gemma's differences: RMSNorm scaling by (1 + w) in float32, the
embeddings scaled by sqrt(hidden) (rounded to the model's dtype), a norm after attention and after the
MLP besides the two before them, q/k norms, GELU-tanh, `query_pre_attn_scalar`, sliding and full layers
with their own RoPE (`rope_local_base_freq` for the sliding ones, rope scaling only on the full ones) and
an optional tanh cap on the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import PretrainedConfig, validate_config
from ..kernels.decoder import Decoder, Layer, Norm
from ..modeling_utils import PreTrainedModel
from .heads import CausalLMHead, SequenceClassificationHead
from .layers import (
    Linear,
    RotaryEmbedding,
    attention_masks,
    check_activation,
    projection,
    same_code,
)
from .llama import LlamaAttention, LlamaMLP, LlamaModel, dense_mlp, norm_qk_per_head
from .stack import CacheMaker

_TYPES = ("sliding_attention", "full_attention")


class Gemma3TextConfig(PretrainedConfig):
    """`rope_parameters` is kept per layer type ({"sliding_attention": {...}, "full_attention": {...}}), as
    transformers 5 writes it; the older keys (`rope_theta`, `rope_scaling` for the full layers,
    `rope_local_base_freq` for the sliding ones, `sliding_window_pattern`) are read when it is absent."""

    model_type = "gemma3_text"
    defaults = {
        "vocab_size": 262208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131072,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "tie_word_embeddings": True,
        "rope_parameters": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
    }

    def __init__(self, **kwargs):
        # one RoPE per layer type: checked per type here, since the generic check reads one flat dict
        rope = kwargs.pop("rope_parameters", None)
        source = kwargs.get("_source_file")
        shape = {"head_dim": self.defaults["head_dim"]} | {k: kwargs[k] for k in ("head_dim",) if k in kwargs}
        if isinstance(rope, dict) and set(rope) & set(_TYPES):
            for kind in _TYPES:
                if rope.get(kind) is not None:
                    validate_config({"rope_parameters": rope[kind], **shape}, source)
        elif rope is not None:
            validate_config({"rope_parameters": rope, **shape}, source)
        super().__init__(**kwargs)
        self.rope_parameters = rope

    def __post_init__(self) -> None:
        check_activation(self, "hidden_activation")
        if self.use_bidirectional_attention:
            from ..errors import ConfigError

            raise ConfigError(
                f"{self._source_file or 'the config'}: use_bidirectional_attention is true (an encoder use of "
                "Gemma 3), which autolm does not support; set it to false for text generation.",
                key="use_bidirectional_attention",
            )
        if self.__dict__.get("_layer_types") is None:
            pattern = getattr(self, "sliding_window_pattern", None) or 6
            self.layer_types = [
                "sliding_attention" if (i + 1) % pattern else "full_attention"
                for i in range(self.num_hidden_layers)
            ]

    @property
    def rope_parameters(self) -> dict:
        return self.__dict__["_rope_parameters"]

    @rope_parameters.setter
    def rope_parameters(self, value: dict | None) -> None:
        """Per type, from transformers 5's nested dict, a flat one (the full layers', e.g. a GGUF's) or
        the legacy keys."""
        value = dict(value or {})
        if value and not set(value) & set(_TYPES):
            value = {"full_attention": value}
        full = dict(value.get("full_attention") or {"rope_type": "default"})
        scaling = self.__dict__.get("rope_scaling")
        if scaling and not value.get("full_attention"):
            full |= scaling
        full.setdefault("rope_theta", self.__dict__.get("rope_theta") or 1_000_000.0)
        local = dict(value.get("sliding_attention") or {"rope_type": "default"})
        local.setdefault("rope_theta", self.__dict__.get("rope_local_base_freq") or 10_000.0)
        for params in (full, local):
            params["rope_type"] = params.pop("type", params.get("rope_type", "default"))
        self.__dict__["_rope_parameters"] = {"sliding_attention": local, "full_attention": full}

    # transformers' Gemma 3 names its activation `hidden_activation`; a `hidden_act` key is kept unread
    @property
    def hidden_act(self) -> str:
        return self.hidden_activation

    @hidden_act.setter
    def hidden_act(self, value) -> None:
        self.__dict__["_hidden_act"] = value

    @property
    def attention_window(self) -> int | None:
        return self.sliding_window

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["rope_parameters"] = {kind: dict(p) for kind, p in self.rope_parameters.items()}
        return out


class _RopeConfig:
    """The view of the config one layer type's RotaryEmbedding reads: its own rope parameters."""

    def __init__(self, config: Gemma3TextConfig, kind: str):
        self.head_dim = config.head_dim
        self.max_position_embeddings = config.max_position_embeddings
        self.rope_parameters = config.rope_parameters[kind]


class Gemma3RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * (1 + w), all in float32, then cast back; w starts at zero."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class Gemma3TextScaledWordEmbedding(nn.Embedding):
    """Embeddings times sqrt(hidden), the factor rounded to the weights' dtype first (55.4256 -> 55.5 in
    bfloat16 for hidden 3072), as the reference computes it."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scalar_embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.scalar_embed_scale, dtype=torch.float32).to(self.weight.dtype)
        return super().forward(input_ids) * scale.to(self.weight.device)


class Gemma3RotaryEmbedding(nn.Module):
    """One RotaryEmbedding per layer type; returns {type: (cos, sin)}."""

    def __init__(self, config: Gemma3TextConfig):
        super().__init__()
        self.layer_types = sorted(set(config.layer_types))
        self.per_type = nn.ModuleDict({k: RotaryEmbedding(_RopeConfig(config, k)) for k in self.layer_types})

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {kind: rope(x, position_ids) for kind, rope in self.per_type.items()}


class Gemma3Attention(LlamaAttention):
    """Llama's attention with per-head (1 + w) q/k norms and the scale query_pre_attn_scalar^-0.5.
    (transformers 5 keeps `attn_logit_softcapping` in the config but its attention never applies it;
    neither does this.)"""

    def __init__(self, config: Gemma3TextConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.q_norm = Gemma3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Gemma3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    norm_qk = norm_qk_per_head  # q, k: (B, T, heads, head_dim); the norms act per head


class Gemma3MLP(LlamaMLP):
    """down(gelu_tanh(gate(x)) * up(x)), Llama's code at the config's `hidden_activation`."""


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Gemma3TextConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.layer_types[layer_idx]
        self.self_attn = Gemma3Attention(config, layer_idx)
        self.mlp = Gemma3MLP(config)
        eps = config.rms_norm_eps
        self.input_layernorm = Gemma3RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = Gemma3RMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = Gemma3RMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = Gemma3RMSNorm(config.hidden_size, eps)

    def forward(self, x, position_embeddings, masks, cache, attentions: list | None = None) -> torch.Tensor:
        """`position_embeddings`: {layer type: (cos, sin)}; this layer takes its type's."""
        rope = position_embeddings[self.attention_type]
        h = self.self_attn(self.input_layernorm(x), rope, masks, cache, attentions)
        x = x + self.post_attention_layernorm(h)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3PreTrainedModel(PreTrainedModel):
    config_class = Gemma3TextConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def _init_module(self, module: nn.Module) -> None:
        super()._init_module(module)
        if isinstance(module, Gemma3RMSNorm):
            with torch.no_grad():
                module.weight.zero_()  # (1 + w): zero is the identity scale


class Gemma3TextModel(CacheMaker, Gemma3PreTrainedModel):
    """The decoder stack; returns `last_hidden_state` (and `past_key_values`, `hidden_states`)."""

    def __init__(self, config: Gemma3TextConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = Gemma3TextScaledWordEmbedding(
            config.vocab_size, config.hidden_size, config.pad_token_id, config.hidden_size**0.5
        )
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Gemma3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Gemma3RotaryEmbedding(config)
        self.gradient_checkpointing = False

    # Llama's stack code: embeddings, per-type masks and rotary, the layers, the final norm
    get_input_embeddings = LlamaModel.get_input_embeddings
    set_input_embeddings = LlamaModel.set_input_embeddings
    forward = LlamaModel.forward


Gemma3PreTrainedModel.base_model_class = Gemma3TextModel


class Gemma3LMHead(Linear):
    """The output projection (`lm_head`), then cap * tanh(logits / cap) when final_logit_softcapping."""

    def __init__(self, in_features: int, out_features: int, softcap: float | None):
        super().__init__(in_features, out_features, bias=False)
        self.softcap = softcap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def gemma_norm(norm: Gemma3RMSNorm) -> Norm:
    return Norm(weight=norm.weight, eps=norm.eps, kind="rms_float", offset=1.0)


class Gemma3ForCausalLM(CausalLMHead, Gemma3PreTrainedModel):
    def __init__(self, config: Gemma3TextConfig):
        super().__init__(config)
        self.lm_head = Gemma3LMHead(config.hidden_size, config.vocab_size, config.final_logit_softcapping)

    def describe_decoder(self) -> Decoder | None:
        """The native decode step's description of this model (None when a module's code differs from
        this file's: a user subclass that overrides a forward runs its own code)."""
        base, c = self.base_model, self.config
        if not (
            same_code(self, Gemma3ForCausalLM, "forward")
            and same_code(base, Gemma3TextModel, "forward")
            and same_code(base.embed_tokens, Gemma3TextScaledWordEmbedding, "forward")
            and same_code(base.rotary_emb, Gemma3RotaryEmbedding, "forward")
            and same_code(base.norm, Gemma3RMSNorm, "forward")
            and same_code(self.lm_head, Gemma3LMHead, "forward")
            and not c.output_hidden_states
            and not c.output_attentions
        ):
            return None
        layers = []
        for layer in base.layers:
            attn = layer.self_attn
            norms = (
                layer.input_layernorm,
                layer.post_attention_layernorm,
                layer.pre_feedforward_layernorm,
                layer.post_feedforward_layernorm,
                attn.q_norm,
                attn.k_norm,
            )
            mlp = dense_mlp(layer.mlp)
            if not (
                mlp is not None
                and same_code(layer, Gemma3DecoderLayer, "forward")
                and same_code(attn, Gemma3Attention, "forward", "project", "norm_qk")
                and all(same_code(n, Gemma3RMSNorm, "forward") for n in norms)
                and all(
                    same_code(m, Linear, "forward")
                    for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
                )
            ):
                return None
            layers.append(
                Layer(
                    attn_norm=gemma_norm(layer.input_layernorm),
                    q=projection(attn.q_proj),
                    k=projection(attn.k_proj),
                    v=projection(attn.v_proj),
                    o=projection(attn.o_proj),
                    attn_out_norm=gemma_norm(layer.post_attention_layernorm),
                    mlp_norm=gemma_norm(layer.pre_feedforward_layernorm),
                    mlp_out_norm=gemma_norm(layer.post_feedforward_layernorm),
                    activation=c.hidden_activation,
                    q_norm=gemma_norm(attn.q_norm),
                    k_norm=gemma_norm(attn.k_norm),
                    scaling=attn.scaling,
                    attention_type=layer.attention_type,
                    **mlp,
                )
            )
        head_dim = c.head_dim
        return Decoder(
            layers=layers,
            hidden=c.hidden_size,
            heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads,
            head_dim=head_dim,
            intermediate=c.intermediate_size,
            rotary_dim=head_dim,
            embed=base.embed_tokens,
            rotary=None,
            rotaries=dict(base.rotary_emb.per_type.items()),
            masks=lambda mask, past, kv_len, cache_position: attention_masks(
                c, mask, past, 1, kv_len, base.embed_tokens.weight.device, cache_position
            ),
            head=lambda x: self.lm_head(base.norm(x)),
            modules=list(self.modules()),
        )


class Gemma3TextForSequenceClassification(SequenceClassificationHead, Gemma3PreTrainedModel):
    pass


__all__ = [
    "Gemma3ForCausalLM",
    "Gemma3PreTrainedModel",
    "Gemma3TextConfig",
    "Gemma3TextForSequenceClassification",
    "Gemma3TextModel",
]
