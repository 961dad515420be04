"""T5 family: T5 v1.0 (ReLU, tied head), T5 v1.1 / Flan-T5 (gated GELU) and mT5 — encoder-decoder models.

Defaults -> relative position buckets -> attention -> feed-forward -> block -> stack -> models.
T5's own math: an RMS norm without a mean (float32 variance), no 1/sqrt(d) attention scaling, and one
learned bias per relative-position bucket (bidirectional in the encoder, causal in the decoder), computed
by the first block and shared by every layer, added to the scores together with the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import PretrainedConfig
from ..errors import AutolmValueError, ConfigError
from ..kernels.decoder import Decoder, Layer, Norm, Projection
from ..modeling_utils import ModelOutput, PreTrainedModel
from .cache import DynamicCache
from .layers import Linear, attention, same_code

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


class T5Config(PretrainedConfig):
    model_type = "t5"
    defaults = {
        "vocab_size": 32128,
        "d_model": 512,
        "d_kv": 64,
        "d_ff": 2048,
        "num_layers": 6,
        "num_decoder_layers": None,
        "num_heads": 8,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "feed_forward_proj": "relu",
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "classifier_dropout": 0.0,
        "tie_word_embeddings": True,
    }

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        parts = str(self.feed_forward_proj).split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ConfigError(
                f"{self._source_file or 'the config'}: feed_forward_proj {self.feed_forward_proj!r} is not "
                "'ACT' or 'gated-ACT' (e.g. 'relu', 'gated-gelu').",
                key="feed_forward_proj",
            )
        self.is_gated_act = parts[0] == "gated"
        self.dense_act_fn = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if self.dense_act_fn not in ACTIVATIONS:
            raise ConfigError(
                f"{self._source_file or 'the config'}: feed_forward_proj {self.feed_forward_proj!r} names the "
                f"activation {self.dense_act_fn!r}; supported: {', '.join(ACTIVATIONS)}.",
                key="feed_forward_proj",
            )
        # transformers 5: the decoder output is scaled by d_model**-0.5 unless the file said the head is
        # untied (Flan-T5 and T5 v1.1 write tie_word_embeddings false) or says so itself
        if getattr(self, "scale_decoder_outputs", None) is None:
            self.scale_decoder_outputs = self.tie_word_embeddings is not False

    # transformers' attribute_map: the generic names read the T5 ones
    hidden_size = property(lambda self: self.d_model)
    num_attention_heads = property(lambda self: self.num_heads)
    num_hidden_layers = property(lambda self: self.num_layers)
    head_dim = property(lambda self: self.d_kv)


class MT5Config(T5Config):
    model_type = "mt5"
    defaults = {
        **T5Config.defaults,
        "vocab_size": 250112,
        "d_ff": 1024,
        "num_layers": 8,
        "num_heads": 6,
        "feed_forward_proj": "gated-gelu",
    }


# --- relative positions ---------------------------------------------------------------------------


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bucket of each (key - query) distance: exact buckets for the nearest half, then logarithmically
    wider ones up to `max_distance`; a bidirectional bucketing spends half its buckets on keys after the
    query, a causal one counts only keys before it (later keys all land in bucket 0)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    scaled = torch.log(distance.float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    large = (exact + scaled.long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, large)


def position_bias(
    table: nn.Embedding, q_len: int, k_len: int, past: int, bidirectional: bool, config
) -> torch.Tensor:
    """(1, heads, q_len, k_len) learned bias for queries at past .. past + q_len - 1 over keys 0 .. k_len - 1."""
    device = table.weight.device
    q = torch.arange(past, past + q_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    buckets = relative_position_bucket(
        k - q, bidirectional, config.relative_attention_num_buckets, config.relative_attention_max_distance
    )
    return table(buckets).permute(2, 0, 1).unsqueeze(0)


def with_mask(
    bias: torch.Tensor | None, keep: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """One additive (B or 1, heads or 1, q, k) bias: the position bias where `keep`, the dtype's minimum elsewhere."""
    if keep is None:
        return bias
    if bias is None:
        bias = torch.zeros((), dtype=dtype, device=keep.device)
    return torch.where(keep, bias.to(dtype), torch.finfo(dtype).min)


# --- modules ---------------------------------------------------------------------------------------


class T5LayerNorm(nn.Module):
    """RMS norm without bias or mean subtraction; the variance in float32, the weight in its own dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def _dropout(module: nn.Module, x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p, True) if module.training and p else x


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.config = config
        self.n_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.q = Linear(config.d_model, inner, bias=False)
        self.k = Linear(config.d_model, inner, bias=False)
        self.v = Linear(config.d_model, inner, bias=False)
        self.o = Linear(inner, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(
                config.relative_attention_num_buckets, config.num_heads
            )

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)  # (B, heads, T, d_kv)

    def forward(self, x, bias, kv, attentions: list | None = None) -> torch.Tensor:
        """`bias`: the additive (position + mask) bias; `kv`: this layer's (keys, values), (B, heads, S, d_kv)."""
        B, T, _ = x.shape
        q = self.heads(self.q(x))
        k, v = kv
        if attentions is not None or self.training:
            scores = torch.matmul(q, k.transpose(2, 3))
            if bias is not None:
                scores = scores + bias
            probs = _dropout(
                self, F.softmax(scores.float(), dim=-1).type_as(scores), self.config.dropout_rate
            )
            if attentions is not None:
                attentions.append(probs)
            out = torch.matmul(probs, v).transpose(1, 2)
        else:
            out = attention(q, k, v, bias, 1.0, self.config._attn_implementation)
        return self.o(out.reshape(B, T, -1))

    def self_kv(self, x: torch.Tensor, cache: DynamicCache | None, layer_idx: int):
        k, v = self.heads(self.k(x)), self.heads(self.v(x))
        return (k, v) if cache is None else cache.update(k, v, layer_idx)


class T5DenseActDense(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.wi = Linear(config.d_model, config.d_ff, bias=False)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACTIVATIONS[config.dense_act_fn]
        self.p = config.dropout_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _dropout(self, self.act(self.wi(x)), self.p)
        return self.wo(h.to(self.wo.weight.dtype))  # wo may be kept in float32 (transformers' fp32 wo)


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = Linear(config.d_model, config.d_ff, bias=False)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACTIVATIONS[config.dense_act_fn]
        self.p = config.dropout_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _dropout(self, self.act(self.wi_0(x)) * self.wi_1(x), self.p)
        return self.wo(h.to(self.wo.weight.dtype))


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = (T5DenseGatedActDense if config.is_gated_act else T5DenseActDense)(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.p = config.dropout_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _dropout(self, self.DenseReluDense(self.layer_norm(x)), self.p)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.p = config.dropout_rate

    def forward(self, x, bias, cache, layer_idx: int, attentions=None) -> torch.Tensor:
        h = self.layer_norm(x)
        kv = self.SelfAttention.self_kv(h, cache, layer_idx)
        return x + _dropout(self, self.SelfAttention(h, bias, kv, attentions), self.p)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.EncDecAttention = T5Attention(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.p = config.dropout_rate

    def forward(self, x, bias, kv, attentions=None) -> torch.Tensor:
        return x + _dropout(self, self.EncDecAttention(self.layer_norm(x), bias, kv, attentions), self.p)


class T5Block(nn.Module):
    """Self-attention, cross-attention (decoder only), feed-forward: `layer.0`, `layer.1`, `layer.2`."""

    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_relative_attention_bias)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config))
        self.layer.append(T5LayerFF(config))

    def forward(
        self, x, self_bias, cache, layer_idx, cross_bias=None, cross_kv=None, attns=None, crosses=None
    ):
        x = self.layer[0](x, self_bias, cache, layer_idx, attns)
        if cross_kv is not None:
            x = self.layer[1](x, cross_bias, cross_kv, crosses)
        return self.layer[-1](x)


class EncoderDecoderCache:
    """The decoder's cache: self-attention keys/values growing per token (`self_attention_cache`) and
    the cross-attention keys/values of the encoder output, computed once (`cross_attention_cache`)."""

    def __init__(self, self_attention_cache: DynamicCache | None = None):
        self.self_attention_cache = self_attention_cache or DynamicCache()
        self.cross_attention_cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.self_attention_cache.get_seq_length(layer_idx)

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search follows its surviving beams)."""
        self.self_attention_cache.reorder_cache(index)
        self.cross_attention_cache = [
            (k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_attention_cache
        ]

    def __len__(self) -> int:
        return len(self.self_attention_cache)


class T5Stack(nn.Module):
    """The encoder (bidirectional) or decoder (causal, with cross-attention) stack of blocks."""

    def __init__(self, config: T5Config, is_decoder: bool, embed_tokens: nn.Embedding):
        super().__init__()
        self.config, self.is_decoder = config, is_decoder
        self.embed_tokens = embed_tokens
        n = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(T5Block(config, is_decoder, i == 0) for i in range(n))
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def self_bias(self, q_len: int, k_len: int, past: int, mask, device, dtype) -> torch.Tensor | None:
        """The self-attention bias of every layer: block 0's position bias plus the padding (encoder) or
        causal and padding (decoder) mask; `mask` is the (B, >= k_len) 1/0 mask or a 4D boolean one."""
        table = getattr(self.block[0].layer[0].SelfAttention, "relative_attention_bias", None)
        bias = None
        if table is not None:
            bias = position_bias(table, q_len, k_len, past, not self.is_decoder, self.config).to(dtype)
        keep = None
        if mask is not None and mask.dim() == 4:
            keep = mask.bool()
        elif mask is not None and not bool(mask[:, :k_len].all()):
            keep = mask[:, None, None, :k_len].bool()
        if self.is_decoder and q_len > 1:
            q = torch.arange(past, past + q_len, device=device)[:, None]
            causal = torch.arange(k_len, device=device)[None, :] <= q
            keep = causal if keep is None else keep & causal
        if bias is None and keep is None:
            return None
        if bias is None:
            bias = torch.zeros(1, 1, q_len, k_len, dtype=dtype, device=device)
        return with_mask(bias, keep, dtype)

    def cross_kv(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of the encoder output for every block's cross-attention."""
        out = []
        for block in self.block:
            attn = block.layer[1].EncDecAttention
            out.append((attn.heads(attn.k(encoder_hidden_states)), attn.heads(attn.v(encoder_hidden_states))))
        return out

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise AutolmValueError("Pass exactly one of input_ids or inputs_embeds.")
        c = self.config
        past_key_values = kwargs.get("cache", past_key_values)
        use_cache = (c.use_cache if use_cache is None else use_cache) and self.is_decoder
        output_hidden_states = (
            c.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        cache = past_key_values if self.is_decoder else None
        if cache is None and use_cache:
            cache = EncoderDecoderCache()
        past = cache.get_seq_length() if cache is not None else 0
        self_bias = self.self_bias(T, past + T, past, attention_mask, x.device, x.dtype)
        cross_bias, cross_kv = None, [None] * len(self.block)
        if self.is_decoder and encoder_hidden_states is not None:
            if encoder_attention_mask is not None and not bool(encoder_attention_mask.all()):
                cross_bias = with_mask(None, encoder_attention_mask[:, None, None, :].bool(), x.dtype)
            if cache is not None and cache.cross_attention_cache:
                cross_kv = cache.cross_attention_cache
            else:
                cross_kv = self.cross_kv(encoder_hidden_states)
                if cache is not None:
                    cache.cross_attention_cache = cross_kv
        self_cache = cache.self_attention_cache if cache is not None else None

        x = _dropout(self, x, c.dropout_rate)
        hidden_states = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        crosses = [] if output_attentions and self.is_decoder else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.block):
            args = (x, self_bias, self_cache, i, cross_bias, cross_kv[i], attns, crosses)
            x = self._gradient_checkpointing_func(block, *args) if checkpointing else block(*args)
            if hidden_states is not None:
                hidden_states.append(x)
        x = _dropout(self, self.final_layer_norm(x), c.dropout_rate)
        if hidden_states is not None:
            hidden_states[-1] = x  # the last entry is the normed output, as in transformers
        out = ModelOutput(
            last_hidden_state=x,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attns) if attns is not None else None,
            cross_attentions=tuple(crosses) if crosses is not None else None,
        )
        return out if c.return_dict_for(return_dict) else out.to_tuple()


# --- models ----------------------------------------------------------------------------------------


class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, False, self.shared)  # embed_tokens IS shared: tied by construction
        self._head_tied = True  # cleared by `sanitize` when the checkpoint has its own lm_head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        for stack in (getattr(self, "encoder", None), getattr(self, "decoder", None)):
            if stack is not None:
                stack.embed_tokens = value

    def get_encoder(self) -> T5Stack:
        return self.encoder

    def tied_keys(self) -> set[str]:
        keys = {k for k in self._tied_weights_keys if k != "lm_head.weight"}
        return keys | ({"lm_head.weight"} if self._head_tied and hasattr(self, "lm_head") else set())

    def tie_weights(self) -> None:
        """The stacks' embeddings are `shared` itself; lm_head is tied unless the checkpoint has its own
        (transformers 5 ties T5's head whatever tie_word_embeddings says, unless both are saved and differ)."""
        if self._head_tied and hasattr(self, "lm_head"):
            self.lm_head.weight = self.shared.weight

    def sanitize(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "shared.weight" not in state_dict:
            for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
                if name in state_dict:
                    state_dict["shared.weight"] = state_dict[name]
                    break
        head, shared = state_dict.get("lm_head.weight"), state_dict.get("shared.weight")
        if hasattr(self, "lm_head") and head is not None and shared is not None:
            # compare one row first: a real untied head differs there, and the whole matrix is not read
            same = (
                head.shape == shared.shape and torch.equal(head[:1], shared[:1]) and torch.equal(head, shared)
            )
            self._head_tied = same
        return state_dict

    def _init_module(self, module: nn.Module) -> None:
        """transformers' T5 initialisation: normal with std initializer_factor / sqrt(fan-in)."""
        f = self.config.initializer_factor
        with torch.no_grad():
            if isinstance(module, T5LayerNorm):
                module.weight.fill_(f)
            elif isinstance(module, nn.Embedding):
                std = f if module.weight.shape[0] == self.config.vocab_size else f * self.config.d_model**-0.5
                module.weight.normal_(0.0, std)
            elif isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                if module.weight.shape[0] == self.config.vocab_size:
                    fan_in = 1
                module.weight.normal_(0.0, f * fan_in**-0.5)


class T5EncoderModel(T5PreTrainedModel):
    """The encoder alone (`AutoModelForTextEncoding`); returns `last_hidden_state`."""

    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs
    ) -> ModelOutput | tuple:
        kwargs.pop("use_cache", None)
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )


class T5Model(T5PreTrainedModel):
    """Encoder and decoder without a head; `last_hidden_state` is the decoder's."""

    _tied_weights_keys = {
        **T5PreTrainedModel._tied_weights_keys,
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.decoder = T5Stack(config, True, self.shared)

    def get_decoder(self) -> T5Stack:
        return self.decoder

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: decoder_start_token_id first, then labels[:-1]; -100 -> pad."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None or pad is None:
            raise AutolmValueError(
                "Turning labels into decoder_input_ids needs config.decoder_start_token_id and pad_token_id "
                "(0 for T5); set them or pass decoder_input_ids."
            )
        shifted = torch.cat([torch.full_like(labels[..., :1], start), labels[..., :-1]], dim=-1)
        return shifted.masked_fill(shifted == -100, pad)

    prepare_decoder_input_ids_from_labels = _shift_right

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, encoder_outputs=None, **kwargs):
        if encoder_outputs is None:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                return_dict=True, **kwargs)  # fmt: skip
        if not isinstance(encoder_outputs, ModelOutput):
            parts = [*encoder_outputs, None, None]
            encoder_outputs = ModelOutput(
                last_hidden_state=parts[0], hidden_states=parts[1], attentions=parts[2]
            )
        return encoder_outputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        past_key_values: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        past_key_values = kwargs.pop("cache", past_key_values)
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        enc = self.encode(input_ids, attention_mask, inputs_embeds, encoder_outputs, **flags)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        dec = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            past_key_values=past_key_values,
            encoder_hidden_states=enc.last_hidden_state,
            encoder_attention_mask=attention_mask,
            use_cache=use_cache,
            return_dict=True,
            **flags,
        )
        loss = logits = None
        head = getattr(self, "lm_head", None)
        last = dec.last_hidden_state
        if head is not None:
            if self.scales_output():
                last = last * self.config.d_model**-0.5
            logits = head(last)
            if labels is not None:
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1)
                )
        out = ModelOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=None if head is not None else last,
            past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions,
        )
        return out if self.config.return_dict_for(return_dict) else out.to_tuple()


class T5ForConditionalGeneration(T5Model):
    """Encoder-decoder with the language-model head (`AutoModelForSeq2SeqLM`); `generate` runs the
    encoder once and decodes with a cache (see autolm.generation.seq2seq)."""

    _tied_weights_keys = {**T5Model._tied_weights_keys, "lm_head.weight": "shared.weight"}

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def scales_output(self) -> bool:
        return bool(self.config.scale_decoder_outputs)

    def describe_decoder(self) -> Decoder | None:
        """The decoder as the native decode step's description: per block, self-attention with the
        shared relative-position bias, cross-attention over the cached encoder keys/values, the
        feed-forward; None when a module's code is not this file's, or an option needs the torch path."""
        dec, c = self.decoder, self.config
        if self.training or c.output_attentions or c.output_hidden_states or not self._plain(dec):
            return None
        dtype = dec.final_layer_norm.weight.dtype
        if any(p.dtype != dtype for p in dec.parameters()) or self.lm_head.weight.dtype != dtype:
            return None  # e.g. transformers' float32 `wo` in a half model: the residual turns float32

        def norm(n: T5LayerNorm) -> Norm:
            return Norm(weight=n.weight, eps=n.variance_epsilon, kind="rms")

        layers = []
        for block in dec.block:
            self_attn, cross, ff = block.layer
            mlp = ff.DenseReluDense
            gated = isinstance(mlp, T5DenseGatedActDense)
            layers.append(
                Layer(
                    attn_norm=norm(self_attn.layer_norm),
                    q=Projection(self_attn.SelfAttention.q.weight),
                    k=Projection(self_attn.SelfAttention.k.weight),
                    v=Projection(self_attn.SelfAttention.v.weight),
                    o=Projection(self_attn.SelfAttention.o.weight),
                    cross_norm=norm(cross.layer_norm),
                    cross_q=Projection(cross.EncDecAttention.q.weight),
                    cross_o=Projection(cross.EncDecAttention.o.weight),
                    mlp_norm=norm(ff.layer_norm),
                    gate=Projection(mlp.wi_0.weight) if gated else None,
                    up=Projection(mlp.wi_1.weight if gated else mlp.wi.weight),
                    down=Projection(mlp.wo.weight),
                    activation=c.dense_act_fn,
                    scaling=1.0,
                )
            )
        scale = c.d_model**-0.5 if self.scales_output() else None

        def head(x: torch.Tensor) -> torch.Tensor:
            x = dec.final_layer_norm(x)
            return self.lm_head(x * scale if scale is not None else x)

        def masks(mask, past, kv_len, cache_position):
            if mask is None or bool(mask[:, :kv_len].all()):
                return {"full_attention": None}
            return {"full_attention": mask[:, None, None, :kv_len].bool()}

        device = dec.final_layer_norm.weight.device
        return Decoder(
            layers=layers,
            hidden=c.d_model,
            heads=c.num_heads,
            kv_heads=c.num_heads,
            head_dim=c.d_kv,
            intermediate=c.d_ff,
            rotary_dim=0,
            embed=dec.embed_tokens,
            rotary=None,
            masks=masks,
            head=head,
            modules=[self, self.lm_head, *dec.modules()],
            position_bias=lambda slot, kv_len: dec.self_bias(1, kv_len, slot, None, device, dtype),
        )

    def _plain(self, dec: T5Stack) -> bool:
        """Every module the decode step stands in for runs this file's code."""
        if not (
            same_code(self, T5Model, "forward")
            and same_code(dec, T5Stack, "forward", "self_bias")
            and same_code(dec.final_layer_norm, T5LayerNorm, "forward")
            and isinstance(self.lm_head, Linear)
            and same_code(self.lm_head, Linear, "forward")
        ):
            return False
        for block in dec.block:
            if len(block.layer) != 3 or not same_code(block, T5Block, "forward"):
                return False
            self_attn, cross, ff = block.layer
            mlp = getattr(ff, "DenseReluDense", None)
            kinds = (T5DenseGatedActDense, T5DenseActDense)
            if not (
                same_code(self_attn, T5LayerSelfAttention, "forward")
                and same_code(cross, T5LayerCrossAttention, "forward")
                and same_code(ff, T5LayerFF, "forward")
                and any(same_code(mlp, kind, "forward") and type(mlp) is kind for kind in kinds)
                and all(same_code(a, T5Attention, "forward", "self_kv", "heads")
                        for a in (self_attn.SelfAttention, cross.EncDecAttention))
                and all(same_code(n, T5LayerNorm, "forward")
                        for n in (self_attn.layer_norm, cross.layer_norm, ff.layer_norm))
            ):  # fmt: skip
                return False
            linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
            if any(type(m) is not Linear or m.bias is not None for m in linears):
                return False
            if mlp.act is not ACTIVATIONS[self.config.dense_act_fn]:
                return False
        return True


class MT5PreTrainedModel(T5PreTrainedModel):
    config_class = MT5Config


class MT5EncoderModel(MT5PreTrainedModel, T5EncoderModel):
    pass


class MT5Model(MT5PreTrainedModel, T5Model):
    pass


class MT5ForConditionalGeneration(MT5PreTrainedModel, T5ForConditionalGeneration):
    def scales_output(self) -> bool:
        return False  # transformers' mT5 never scales the decoder output
