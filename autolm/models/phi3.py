"""Phi-3 family: Phi-3-mini/small-shaped dense models, Phi-3.5-mini, Phi-4-mini (`model_type` "phi3").

Defaults -> rotary -> attention -> MLP -> decoder layer -> base model -> task heads. Llama's layout with
three differences kept as the checkpoints have them: q/k/v are one fused `qkv_proj` and gate/up one
`gate_up_proj` (no renaming on load or save), rotary may cover only the first `partial_rotary_factor` of
each head, and "longrope" scaling switches from `short_factor` to `long_factor` once a forward sees a
position past `original_max_position_embeddings` (generation then runs the whole sequence again, see
`Phi3ForCausalLM.rerun_length`). Dropouts (`resid_pdrop`, `embd_pdrop`) do nothing at inference and are
not built.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from ..configuration import PretrainedConfig
from ..errors import ConfigError
from ..kernels.decoder import Decoder, Layer, Projection
from .heads import CausalLMHead, ScoreTokenClassificationHead, SequenceClassificationHead
from .layers import (
    Linear,
    RMSNorm,
    activation,
    apply_rotary,
    attention,
    attention_masks,
    check_activation,
    rms_norm,
    rope_inv_freq,
    rope_parameters,
    same_code,
)
from .llama import LlamaDecoderLayer, LlamaModel, LlamaPreTrainedModel
from .stack import CacheMaker


class Phi3Config(PretrainedConfig):
    model_type = "phi3"
    defaults = {
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": None,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "pad_token_id": 32000,
        "sliding_window": None,
    }
    # transformers' Phi-3 slides every layer when sliding_window is set, whatever `layer_types` says
    _reads_layer_types = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        check_activation(self)
        rope = phi3_rope(self)
        if rope["rope_type"] not in ("default", "longrope", "linear", "llama3", "yarn"):
            # transformers' Phi-3 checks a file for default/longrope only, but runs the others when set
            # afterwards (from_pretrained(rope_parameters=...)), so these are computed too
            raise ConfigError(
                f"{self._source_file or 'the Phi-3 config'}: rope type {rope['rope_type']!r} is not "
                "supported for Phi-3; use 'default' or 'longrope' in rope_scaling / rope_parameters."
            )
        if rope["rope_type"] == "longrope":
            half = rotary_dim(self) // 2
            for key in ("short_factor", "long_factor"):
                if len(rope.get(key) or ()) != half:
                    raise ConfigError(
                        f"{self._source_file or 'the Phi-3 config'}: longrope's {key} needs {half} numbers "
                        f"(half the rotary width), found {len(rope.get(key) or ())}; fix it in config.json."
                    )

    @property
    def attention_window(self) -> int | None:
        return self.sliding_window

    def _derived_layer_types(self) -> list[str]:
        kind = "full_attention" if self.sliding_window is None else "sliding_attention"
        return [kind] * self.num_hidden_layers


def head_dim(config) -> int:
    # Phi-3 configs carry no head_dim; one written in config.json wins, as in transformers
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def phi3_rope(config) -> dict:
    """The rotary settings as transformers' Phi-3 reads them: `partial_rotary_factor` top-level or in the
    dict, "su"/"yarn" meaning longrope, the top-level `original_max_position_embeddings` winning."""
    p = rope_parameters(config)
    p.setdefault("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)
    if p["rope_type"] in ("su", "yarn"):
        p["rope_type"] = "longrope"
    if p["rope_type"] == "longrope":
        p["original_max_position_embeddings"] = config.original_max_position_embeddings
    return p


def rotary_dim(config) -> int:
    return int(head_dim(config) * phi3_rope(config)["partial_rotary_factor"])


class Phi3RotaryEmbedding(nn.Module):
    """cos/sin over the first `rotary_dim` channels; longrope picks its short or long factors from the
    largest position of each forward, with one attention factor scaling both."""

    def __init__(self, config: Phi3Config):
        super().__init__()
        p = phi3_rope(config)
        self.dim = rotary_dim(config)
        base = float(p["rope_theta"])
        # built on the CPU explicitly: under the loader's meta-device context these stay real tensors
        exps = torch.arange(0, self.dim, 2, dtype=torch.int64, device="cpu").float() / self.dim
        self.attention_scaling = 1.0
        self.original = None  # longrope: past this many positions the long factors apply
        if p["rope_type"] == "longrope":
            self.original = p["original_max_position_embeddings"]
            factor = p.get("factor") or config.max_position_embeddings / self.original
            scale = p.get("attention_factor")
            if scale is None:
                scale = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(self.original))
            self.attention_scaling = scale
            short = torch.tensor(p["short_factor"], dtype=torch.float32, device="cpu")
            long = torch.tensor(p["long_factor"], dtype=torch.float32, device="cpu")
            self.register_buffer("long_inv_freq", 1.0 / (long * base**exps), persistent=False)
            inv_freq = 1.0 / (short * base**exps)
        elif p["rope_type"] == "default":
            inv_freq = 1.0 / (base**exps)
        else:  # linear, llama3, yarn: layers' code, on this config's head size and rotary fraction
            shape = SimpleNamespace(
                rope_parameters=p,
                head_dim=head_dim(config),
                max_position_embeddings=config.max_position_embeddings,
            )
            inv_freq, self.attention_scaling = rope_inv_freq(shape)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.original is not None and int(position_ids.max()) + 1 > self.original:
            inv_freq = self.long_inv_freq
        freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, rotary_dim)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        half = sin.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # see layers.apply_rotary
        return cos.to(x.dtype), sin.to(x.dtype)


def apply_partial_rotary(q, k, cos, sin):
    """Rotary over the first cos.shape[-1] channels of each head; the rest pass through."""
    d = cos.shape[-1]
    if d == q.shape[-1]:
        return apply_rotary(q, k, cos, sin)
    q_rot, k_rot = apply_rotary(q[..., :d], k[..., :d], cos, sin)
    return torch.cat((q_rot, q[..., d:]), dim=-1), torch.cat((k_rot, k[..., d:]), dim=-1)


class Phi3Attention(nn.Module):
    def __init__(self, config: Phi3Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = head_dim(config)
        self.scaling = self.head_dim**-0.5
        self.attention_type = config.layer_types[layer_idx]
        self.q_width = config.num_attention_heads * self.head_dim
        self.kv_width = config.num_key_value_heads * self.head_dim
        self.qkv_proj = Linear(config.hidden_size, self.q_width + 2 * self.kv_width, bias=False)
        self.o_proj = Linear(self.q_width, config.hidden_size, bias=False)

    def forward(self, x, position_embeddings, masks, cache, attentions: list | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split((self.q_width, self.kv_width, self.kv_width), dim=-1)
        shape = (B, T, -1, self.head_dim)
        q, k = apply_partial_rotary(q.view(shape), k.view(shape), *position_embeddings)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.reshape(shape).transpose(1, 2)  # (B, heads, T, D)
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


class Phi3MLP(nn.Module):
    """down(up * act(gate)), gate and up the two halves of one `gate_up_proj`."""

    def __init__(self, config: Phi3Config):
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.activation_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.activation_fn(gate))


class Phi3DecoderLayer(LlamaDecoderLayer):
    """Llama's pre-norm residual layer (its forward) around Phi-3's attention and MLP."""

    def __init__(self, config: Phi3Config, layer_idx: int, attention_class: type[nn.Module] = Phi3Attention):
        nn.Module.__init__(self)
        self.self_attn = attention_class(config, layer_idx)
        self.mlp = Phi3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class Phi3PreTrainedModel(LlamaPreTrainedModel):
    config_class = Phi3Config
    attention_class = Phi3Attention
    decoder_layer_class = Phi3DecoderLayer


class Phi3Model(CacheMaker, Phi3PreTrainedModel):
    """The decoder stack; its forward is Llama's (positions, masks per type, rotary, the layers)."""

    def __init__(self, config: Phi3Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(Phi3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Phi3RotaryEmbedding(config)
        self.gradient_checkpointing = False

    get_input_embeddings = LlamaModel.get_input_embeddings
    set_input_embeddings = LlamaModel.set_input_embeddings
    forward = LlamaModel.forward


Phi3PreTrainedModel.base_model_class = Phi3Model


def _rows(layer: nn.Linear, start: int, width: int) -> Projection:
    """Rows start .. start + width of a fused projection (views: the checkpoint's tensor is read in place)."""
    return Projection(weight=layer.weight[start : start + width])


class Phi3ForCausalLM(CausalLMHead, Phi3PreTrainedModel):
    def rerun_length(self) -> int | None:
        """The sequence length at which generation drops the cache and runs the whole sequence again:
        longrope's first position past `original_max_position_embeddings` changes every cached key
        (transformers' Phi-3 does the same in prepare_inputs_for_generation). None without longrope."""
        original = self.model.rotary_emb.original
        return None if original is None else original + 1

    def describe_decoder(self) -> Decoder | None:
        """The native decode step's description, q/k/v and gate/up as row slices of the fused tensors;
        None when a module's code differs from this file's."""
        base, c = self.model, self.config
        if c.output_hidden_states or c.output_attentions:
            return None
        if not (
            same_code(self, Phi3ForCausalLM, "forward")
            and same_code(base, Phi3Model, "forward")
            and same_code(base.rotary_emb, Phi3RotaryEmbedding, "forward")
            and same_code(base.norm, RMSNorm, "forward")
            and same_code(self.lm_head, Linear, "forward")
            and c.hidden_act in ("silu", "swish", "gelu_pytorch_tanh", "relu", "gelu")
        ):
            return None
        inter, layers = c.intermediate_size, []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if not (
                same_code(layer, Phi3DecoderLayer, "forward")
                and same_code(attn, Phi3Attention, "forward")
                and same_code(mlp, Phi3MLP, "forward")
                and all(
                    same_code(m, Linear, "forward") for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj)
                )
                and same_code(mlp.down_proj, Linear, "forward")
                and all(
                    same_code(n, RMSNorm, "forward")
                    for n in (layer.input_layernorm, layer.post_attention_layernorm)
                )
            ):
                return None
            q, kv = attn.q_width, attn.kv_width
            layers.append(
                Layer(
                    attn_norm=rms_norm(layer.input_layernorm),
                    q=_rows(attn.qkv_proj, 0, q),
                    k=_rows(attn.qkv_proj, q, kv),
                    v=_rows(attn.qkv_proj, q + kv, kv),
                    o=Projection(attn.o_proj.weight),
                    mlp_norm=rms_norm(layer.post_attention_layernorm),
                    gate=_rows(mlp.gate_up_proj, 0, inter),
                    up=_rows(mlp.gate_up_proj, inter, inter),
                    down=Projection(mlp.down_proj.weight),
                    activation=c.hidden_act,
                    scaling=attn.scaling,
                    attention_type=attn.attention_type,
                )
            )
        return Decoder(
            layers=layers,
            hidden=c.hidden_size,
            heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads,
            head_dim=head_dim(c),
            intermediate=inter,
            rotary_dim=base.rotary_emb.dim,
            embed=base.embed_tokens,
            rotary=base.rotary_emb,
            masks=lambda mask, past, kv_len, cache_position: attention_masks(
                c, mask, past, 1, kv_len, base.embed_tokens.weight.device, cache_position
            ),
            head=lambda x: self.lm_head(base.norm(x)),
            modules=list(self.modules()),
        )


class Phi3ForSequenceClassification(SequenceClassificationHead, Phi3PreTrainedModel):
    pass


class Phi3ForTokenClassification(ScoreTokenClassificationHead, Phi3PreTrainedModel):
    pass
