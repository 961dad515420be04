"""Qwen (1.0) family: Qwen-7B, Qwen-7B-Chat, Qwen-14B and their fine-tunes (`model_type` "qwen"), whose
repos ship their own code; this file runs them without it.

Defaults -> rotary -> attention -> MLP -> block -> base model -> causal LM head. GPT-2-style names
(`transformer.h.N.attn.c_attn`), pre-norm RMSNorm, fused q/k/v with a bias, and two long-context options:
`use_dynamic_ntk` (a rotary base stretched once from the prompt's length and kept while decoding) and
`use_logn_attn` (queries past `seq_length` scaled by log_seq_length(position)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import PretrainedConfig
from ..errors import AutolmValueError, ConfigError
from ..kernels.decoder import Decoder, Layer, Projection
from ..modeling_utils import ModelOutput, PreTrainedModel
from .heads import CausalLMHead
from .layers import Linear, RMSNorm, attention, attention_masks, positions_and_masks, rms_norm, same_code
from .stack import CacheMaker, StackRun


class QWenConfig(PretrainedConfig):
    """The repo's key names (n_embd, n_layer, ffn_hidden_size, ...); later revisions write hidden_size,
    intermediate_size, ... instead, and both read and write the same attributes."""

    model_type = "qwen"
    defaults = {
        "vocab_size": 151851,
        "n_embd": 4096,
        "n_layer": 32,
        "n_head": 32,
        "n_positions": 8192,
        "ffn_hidden_size": 22016,
        "kv_channels": 128,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "rotary_pct": 1.0,
        "rotary_emb_base": 10000,
        "use_dynamic_ntk": False,
        "use_logn_attn": False,
        "seq_length": 2048,
        "no_bias": True,
        "bf16": False,
        "fp16": False,
        "fp32": False,
        "use_flash_attn": "auto",
        "eos_token_id": 151643,
        "tie_word_embeddings": False,
    }
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "max_position_embeddings": "n_positions",
        "intermediate_size": "ffn_hidden_size",
    }
    _reads_layer_types = False

    def __post_init__(self) -> None:
        source = self._source_file or "the Qwen config"
        if self.kv_channels * self.n_head != self.n_embd:
            # the repo's code splits c_attn's output in n_embd-wide pieces, so any other width fails there
            raise ConfigError(
                f"{source}: kv_channels ({self.kv_channels}) x n_head ({self.n_head}) must equal n_embd "
                f"({self.n_embd}); fix kv_channels in config.json."
            )
        if sum(bool(getattr(self, k)) for k in ("bf16", "fp16", "fp32")) > 1:
            raise ConfigError(f'{source}: only one of "bf16", "fp16", "fp32" may be true; keep one.')
        if not 0 < self.rotary_pct <= 1:
            raise ConfigError(f"{source}: rotary_pct is {self.rotary_pct}; it must be in (0, 1].")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_key_value_heads(self) -> int:
        return self.n_head

    @property
    def embedding_size(self) -> int:
        # the first revision sizes the embedding by padded_vocab_size, later ones by vocab_size
        return getattr(self, "padded_vocab_size", None) or self.vocab_size

    def flag_dtype(self, device: torch.device | None = None) -> torch.dtype:
        """The dtype the repo's code picks when the caller names none: its bf16/fp16/fp32 flag, else bf16 or
        fp16 on a GPU that runs them fast, else float32 (always float32 on the CPU)."""
        if self.bf16:
            return torch.bfloat16
        if self.fp16:
            return torch.float16
        on_gpu = torch.cuda.is_available() and (device is None or device.type == "cuda")
        if self.fp32 or not on_gpu:
            return torch.float32
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if torch.cuda.get_device_capability(0)[0] >= 7 else torch.float32


def _mapped(name: str, key: str) -> property:
    return property(lambda self: getattr(self, key), lambda self, value: setattr(self, key, value), doc=name)


for _name, _key in QWenConfig.attribute_map.items():
    setattr(QWenConfig, _name, _mapped(_name, _key))


def ntk_alpha(length: int, seq_length: int) -> float:
    """Dynamic NTK's alpha for a prompt of `length` tokens (1 up to `seq_length`)."""
    return max(2 ** math.ceil(math.log(length / seq_length, 2) + 1) - 1, 1)


class QWenRotary(nn.Module):
    """cos/sin over the first `dim` channels of each head; `alpha` stretches the base (dynamic NTK)."""

    def __init__(self, config: QWenConfig):
        super().__init__()
        head_dim = config.head_dim
        self.dim = head_dim if config.rotary_pct == 1.0 else int(head_dim * config.rotary_pct)
        self.base = float(config.rotary_emb_base)
        self.alpha = 1.0

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base * self.alpha ** (self.dim / (self.dim - 2))
        exps = torch.arange(0, self.dim, 2, device=x.device).float() / self.dim
        inv_freq = 1.0 / (base**exps)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()  # float32: the rotation runs in float32, as the repo's code


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t (B, T, heads, head_dim); the first cos.shape[-1] channels rotate, the rest pass through."""
    d = cos.shape[-1]
    x, rest = t[..., :d].float(), t[..., d:].float()
    x1, x2 = x.chunk(2, dim=-1)
    x = x * cos[:, :, None] + torch.cat((-x2, x1), dim=-1) * sin[:, :, None]
    return torch.cat((x, rest), dim=-1).type_as(t)


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=True)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=not config.no_bias)

    def forward(self, x, rotary, logn, masks, cache) -> torch.Tensor:
        B, T, E = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, -1, self.head_dim).unbind(2)  # (B, T, heads, head_dim) each
        q, k = rotate(q, *rotary), rotate(k, *rotary)
        if logn is not None:
            q = q * logn.to(q.dtype)[None, :, None, None]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = attention(
            q, k, v, masks["full_attention"], self.scaling, self.config._attn_implementation, True
        )
        return self.c_proj(out.reshape(B, T, E))


class QWenMLP(nn.Module):
    """c_proj(w1(x) * silu(w2(x))): the activation is on w2, and each is half of ffn_hidden_size wide."""

    def __init__(self, config: QWenConfig):
        super().__init__()
        width, bias = config.ffn_hidden_size // 2, not config.no_bias
        self.w1 = Linear(config.n_embd, width, bias=bias)
        self.w2 = Linear(config.n_embd, width, bias=bias)
        self.c_proj = Linear(width, config.n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = QWenAttention(config, layer_idx)
        self.ln_2 = RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, x, rotary, logn, masks, cache, attentions=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, logn, masks, cache)
        return x + self.mlp(self.ln_2(x))


class QWenPreTrainedModel(PreTrainedModel):
    config_class = QWenConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = False

    def sanitize(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The repo's buffers (causal mask, rotary frequencies) are rebuilt here, never read."""
        drop = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
        return {k: v for k, v in state_dict.items() if not k.endswith(drop)}


class QWenModel(CacheMaker, QWenPreTrainedModel):
    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.embedding_size, config.n_embd)
        self.drop = nn.Dropout(getattr(config, "embd_pdrop", 0.0) or 0.0)
        self.h = nn.ModuleList(QWenBlock(config, i) for i in range(config.n_layer))
        self.ln_f = RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.rotary_emb = QWenRotary(config)
        self.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def logn(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Per-position query scale log(p + 1) / log(seq_length) past seq_length (1 before); None when off
        or when every position is within seq_length."""
        n = self.config.seq_length
        if not self.config.use_logn_attn or self.training:
            return None
        pos = position_ids[0].to(torch.float64) + 1
        if int(pos.max()) <= n:
            return None
        return torch.where(pos > n, pos.log() / math.log(n), torch.ones_like(pos)).float()

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
        if output_attentions:
            raise AutolmValueError("output_attentions is not supported for Qwen; call without it.")
        run = StackRun.start(
            self, input_ids, inputs_embeds, past_key_values, use_cache, output_hidden_states, False, kwargs
        )
        x, c, cache = run.x, self.config, run.cache
        B, T = x.shape[:2]
        past = 0 if cache is None else cache.get_seq_length()
        if cache_position is not None:
            past = int(cache_position[0])
        # the repo's code places tokens by their index in the cache, whatever position_ids say
        positions = torch.arange(past, past + T, device=x.device)[None].expand(B, -1)
        _, masks = positions_and_masks(c, attention_mask, positions, cache, cache_position, B, T, x.device)
        if c.use_dynamic_ntk and not self.training and past == 0:
            self.rotary_emb.alpha = ntk_alpha(T, c.seq_length)  # fixed from the prompt, kept while decoding
        elif not c.use_dynamic_ntk:
            self.rotary_emb.alpha = 1.0
        rotary = self.rotary_emb(x, positions)
        logn = self.logn(positions)
        return run.finish(self.drop(x), self.h, (rotary, logn, masks), self.ln_f, return_dict)


QWenPreTrainedModel.base_model_class = QWenModel


def _rows(layer: nn.Linear, start: int, width: int) -> Projection:
    bias = None if layer.bias is None else layer.bias[start : start + width]
    return Projection(weight=layer.weight[start : start + width], bias=bias)


class QWenLMHeadModel(CausalLMHead, QWenPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def describe_decoder(self) -> Decoder | None:
        """The native decode step's description (logn attention as a per-step query scale); None when a
        module's code differs from this file's."""
        base, c = self.transformer, self.config
        if c.output_hidden_states or self.training:
            return None
        if not (
            same_code(self, QWenLMHeadModel, "forward")
            and same_code(base, QWenModel, "forward", "logn")
            and same_code(base.ln_f, RMSNorm, "forward")
            and same_code(self.lm_head, Linear, "forward")
        ):
            return None
        E, layers = c.n_embd, []
        for block in base.h:
            attn, mlp = block.attn, block.mlp
            if not (
                same_code(block, QWenBlock, "forward")
                and same_code(attn, QWenAttention, "forward")
                and same_code(mlp, QWenMLP, "forward")
                and all(same_code(m, Linear, "forward") for m in (attn.c_attn, attn.c_proj, mlp.w1, mlp.w2))
                and all(same_code(n, RMSNorm, "forward") for n in (block.ln_1, block.ln_2))
            ):
                return None
            layers.append(
                Layer(
                    attn_norm=rms_norm(block.ln_1),
                    q=_rows(attn.c_attn, 0, E),
                    k=_rows(attn.c_attn, E, E),
                    v=_rows(attn.c_attn, 2 * E, E),
                    o=Projection(attn.c_proj.weight, attn.c_proj.bias),
                    mlp_norm=rms_norm(block.ln_2),
                    gate=Projection(mlp.w2.weight, mlp.w2.bias),  # silu(w2(x)) * w1(x)
                    up=Projection(mlp.w1.weight, mlp.w1.bias),
                    down=Projection(mlp.c_proj.weight, mlp.c_proj.bias),
                    activation="silu",
                    scaling=attn.scaling,
                )
            )
        rot = base.rotary_emb

        def rotary(x, position_ids):
            # the step's convention: sin with its first half negated (see layers.apply_rotary)
            cos, sin = rot(x, position_ids.reshape(x.shape[0], 1))
            half = sin.shape[-1] // 2
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            return cos.to(x.dtype), sin.to(x.dtype)

        def query_scale(slot: int) -> float:
            scale = base.logn(torch.tensor([[slot]]))
            return 1.0 if scale is None else float(scale.to(base.wte.weight.dtype)[0])

        return Decoder(
            layers=layers,
            hidden=E,
            heads=c.n_head,
            kv_heads=c.n_head,
            head_dim=c.head_dim,
            intermediate=c.ffn_hidden_size // 2,
            rotary_dim=rot.dim,
            embed=base.wte,
            rotary=rotary,
            masks=lambda mask, past, kv_len, cache_position: attention_masks(
                c, mask, past, 1, kv_len, base.wte.weight.device, cache_position
            ),
            head=lambda x: self.lm_head(base.ln_f(x)),
            modules=list(self.modules()),
            query_scale=query_scale if c.use_logn_attn else None,
        )
