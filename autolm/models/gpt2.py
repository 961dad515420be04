"""GPT-2 family: gpt2, distilgpt2, gpt2-medium/large/xl and their fine-tunes.

Defaults -> attention -> MLP -> block -> base model -> task heads. Learned absolute positions,
pre-norm LayerNorm, `gelu_new`, and the checkpoints' Conv1D layout: every projection stores its weight
as (in, out) and computes x @ W + b, so Hugging Face safetensors load as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import PretrainedConfig
from ..errors import AutolmValueError, ConfigError
from ..kernels.decoder import Decoder, Layer, Norm, Projection
from ..modeling_utils import ModelOutput, PreTrainedModel
from .heads import CausalLMHead, SequenceClassificationHead, TokenClassificationHead
from .layers import activation, attention, attention_masks, check_activation, positions_and_masks, same_code
from .stack import CacheMaker, StackRun


class GPT2Config(PretrainedConfig):
    """GPT-2's own key names (n_embd, n_layer, ...); the common names (hidden_size, ...) read and write
    them, as transformers' attribute_map does."""

    model_type = "gpt2"
    defaults = {
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "summary_activation": None,
        "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
    }
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __post_init__(self) -> None:
        check_activation(self, "activation_function")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) is not a multiple of n_head ({self.n_head}) in "
                f"{self._source_file or 'the GPT-2 config'}; fix one of them."
            )
        if self.add_cross_attention:
            raise ConfigError(
                "add_cross_attention=True (GPT-2 as the decoder of an encoder-decoder model) is not "
                "supported; load the model without it."
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_key_value_heads(self) -> int:
        return self.n_head

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


def _mapped(name: str, key: str) -> property:
    return property(lambda self: getattr(self, key), lambda self, value: setattr(self, key, value), doc=name)


for _name, _key in GPT2Config.attribute_map.items():
    setattr(GPT2Config, _name, _mapped(_name, _key))


class Conv1D(nn.Module):
    """y = x W + b with W stored (in, out): GPT-2's layout, kept so checkpoints load without a transpose."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], self.nf)


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.embed_dim = config.n_embd
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, masks, cache, attentions: list | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # (B, heads, T, head_dim) each
        q, k, v = self.c_attn(x).view(B, T, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        mask = masks["full_attention"]
        impl = self.config._attn_implementation
        upcast = impl == "eager" and self.config.reorder_and_upcast_attn and q.dtype != torch.float32
        if upcast:  # transformers' reordered attention: scores and softmax in float32
            q, k = q.float(), k.float()
        want = attentions is not None
        out = attention(q, k.to(q.dtype), v.to(q.dtype), mask, self.scaling, impl, True, want)
        if want:
            out, probs = out
            attentions.append(probs)
        out = out.to(x.dtype).reshape(B, T, -1)
        return self.resid_dropout(self.c_proj(out))


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(config.intermediate_size, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.intermediate_size)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x, masks, cache, attentions: list | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), masks, cache, attentions)
        return x + self.mlp(self.ln_2(x))


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True

    def sanitize(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Old exports carry the causal-mask buffers `attn.bias` / `attn.masked_bias`; no model needs them."""
        return {k: v for k, v in state_dict.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}


class GPT2Model(CacheMaker, GPT2PreTrainedModel):
    """Token + position embeddings, the blocks, the final LayerNorm; returns `last_hidden_state`."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
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
        x, c = run.x, self.config
        position_ids, masks = positions_and_masks(
            c, attention_mask, position_ids, run.cache, cache_position, *x.shape[:2], x.device
        )
        if not torch.compiler.is_compiling() and int(position_ids.max()) >= c.n_positions:
            raise AutolmValueError(
                f"Position {int(position_ids.max())} is past this model's n_positions ({c.n_positions}); "
                f"keep prompt plus new tokens within {c.n_positions}."
            )
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        x = self.drop(x)
        return run.finish(x, self.h, (masks,), self.ln_f, return_dict)


GPT2PreTrainedModel.base_model_class = GPT2Model


def _layer_norm(norm: nn.LayerNorm) -> Norm:
    return Norm(weight=norm.weight, bias=norm.bias, eps=norm.eps, kind="layer")


def _conv(conv: Conv1D, start: int = 0, width: int | None = None) -> Projection:
    """A Conv1D's (in, out) weight, or the `width` columns from `start` (c_attn's q, k and v)."""
    width = conv.nf if width is None else width
    w, b = conv.weight[:, start : start + width], conv.bias[start : start + width]
    return Projection(weight=w, bias=b, transposed=True)


class GPT2LMHeadModel(CausalLMHead, GPT2PreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def describe_decoder(self) -> Decoder | None:
        """The native decode step's description (None when a module's code differs from this file's)."""
        base, c = self.transformer, self.config
        plain = (
            same_code(self, GPT2LMHeadModel, "forward")
            and same_code(base, GPT2Model, "forward")
            and same_code(base.ln_f, nn.LayerNorm, "forward")
            and not c.output_hidden_states
            and not c.output_attentions
            and not self.training
        )
        if not plain:
            return None
        E = c.n_embd
        layers = []
        for block in base.h:
            attn, mlp = block.attn, block.mlp
            if not (
                same_code(block, GPT2Block, "forward")
                and same_code(attn, GPT2Attention, "forward")
                and same_code(mlp, GPT2MLP, "forward")
                and all(
                    same_code(m, Conv1D, "forward") for m in (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
                )
                and all(same_code(n, nn.LayerNorm, "forward") for n in (block.ln_1, block.ln_2))
            ):
                return None
            layers.append(
                Layer(
                    attn_norm=_layer_norm(block.ln_1),
                    q=_conv(attn.c_attn, 0, E),
                    k=_conv(attn.c_attn, E, E),
                    v=_conv(attn.c_attn, 2 * E, E),
                    o=_conv(attn.c_proj),
                    mlp_norm=_layer_norm(block.ln_2),
                    up=_conv(mlp.c_fc),
                    down=_conv(mlp.c_proj),
                    activation=c.activation_function,
                    scaling=attn.scaling,
                )
            )
        return Decoder(
            layers=layers,
            hidden=E,
            heads=c.n_head,
            kv_heads=c.n_head,
            head_dim=c.head_dim,
            intermediate=c.intermediate_size,
            rotary_dim=0,
            embed=base.wte,
            positions=base.wpe,
            rotary=None,
            masks=lambda mask, past, kv_len, cache_position: attention_masks(
                c, mask, past, 1, kv_len, base.wte.weight.device, cache_position
            ),
            head=lambda x: self.lm_head(base.ln_f(x)),
            modules=list(self.modules()),
        )


class GPT2ForSequenceClassification(SequenceClassificationHead, GPT2PreTrainedModel):
    pass


class GPT2ForTokenClassification(TokenClassificationHead, GPT2PreTrainedModel):
    def __init__(self, config: GPT2Config):
        super().__init__(config)
        if (
            getattr(config, "classifier_dropout", None) is None
            and getattr(config, "hidden_dropout", None) is None
        ):
            self.dropout = nn.Dropout(0.1)  # transformers' GPT-2 default (only matters in training)
