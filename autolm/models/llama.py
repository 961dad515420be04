"""Llama family: Llama 2/3/3.x, Vicuna, TinyLlama, SmolLM, Mistral-style configs.

Defaults -> attention -> MLP -> decoder layer -> base model -> task heads. Qwen2 and Qwen3 reuse these
blocks and swap in their own attention (see qwen2.py, qwen3.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import PretrainedConfig
from ..kernels import MAX_ROWS, linear
from ..modeling_utils import ModelOutput, PreTrainedModel
from .cache import DynamicCache
from .layers import Linear, RMSNorm, RotaryEmbedding, activation, apply_rotary, attention, causal_mask


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

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @property
    def attention_window(self) -> int | None:
        """Sliding-window size when the config turns one on, else None."""
        if getattr(self, "use_sliding_window", True) is False:
            return None
        return getattr(self, "sliding_window", None)


class MistralConfig(LlamaConfig):
    """Mistral checkpoints use Llama's tensor names; the type is kept so saved configs stay "mistral"."""

    model_type = "mistral"
    defaults = {**LlamaConfig.defaults, "sliding_window": None, "max_position_embeddings": 32768}


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.make_projections(config)
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)

    def make_projections(self, config: LlamaConfig) -> None:
        h, d, bias = config.hidden_size, self.head_dim, config.attention_bias
        self.q_proj = Linear(h, config.num_attention_heads * d, bias=bias)
        self.k_proj = Linear(h, config.num_key_value_heads * d, bias=bias)
        self.v_proj = Linear(h, config.num_key_value_heads * d, bias=bias)
        self.o_proj = Linear(config.num_attention_heads * d, h, bias=bias)

    # `autolm.generation.layout.fuse_projections` fills the buffers qkv_weight/qkv_bias with q/k/v in
    # one matrix whose row blocks the three parameters view (no extra memory): one matmul, not three.
    # Buffers, so `.to()` converts them with the parameters; not persistent, so never saved.
    fusable = {"qkv": ("q_proj", "k_proj", "v_proj")}

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as (B, T, heads, head_dim)."""
        B, T, _ = x.shape
        if self.qkv_weight is not None:
            qkv = linear(x, self.qkv_weight, self.qkv_bias).view(B, T, -1, self.head_dim)
            return qkv.split(self.head_counts, dim=2)
        shape = (B, T, -1, self.head_dim)
        return self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)

    @property
    def head_counts(self) -> tuple[int, int, int]:
        c = self.config
        return (c.num_attention_heads, c.num_key_value_heads, c.num_key_value_heads)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head normalisation before rotary; none in Llama (see Qwen3)."""
        return q, k

    def forward(self, x, position_embeddings, mask, cache) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x)
        q, k = apply_rotary(*self.norm_qk(q, k), *position_embeddings)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = attention(q, k, v, mask, self.scaling, self.config._attn_implementation)
        return self.o_proj(out.reshape(B, T, -1))


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = activation(config.hidden_act)
        # filled by `fuse_projections`, as attention's q/k/v
        self.register_buffer("gate_up_weight", None, persistent=False)
        self.register_buffer("gate_up_bias", None, persistent=False)

    fusable = {"gate_up": ("gate_proj", "up_proj")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is not None and x.shape[:-1].numel() <= MAX_ROWS:
            # fused for decoding; a prompt's gemm runs faster on the two halves (measured at 38-304 rows)
            gate, up = linear(x, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act_fn(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__()
        self.self_attn = attention_class(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, position_embeddings, mask, cache) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_embeddings, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    attention_class: type[nn.Module] = LlamaAttention


class LlamaModel(LlamaPreTrainedModel):
    """The decoder stack; returns `last_hidden_state` (and `past_key_values`, `hidden_states`)."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.attention_class) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

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
        return_dict: bool = True,
        cache_position: torch.LongTensor | None = None,
        **kwargs,
    ) -> ModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        past_key_values = kwargs.get("cache", past_key_values)  # transformers 5's new name
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        cache = past_key_values
        if cache is None and use_cache:
            cache = DynamicCache()
        if cache_position is not None and hasattr(cache, "cache_position"):
            cache.cache_position = cache_position  # a static cache writes at these slots
        # A 4D boolean mask comes ready-made (e.g. from a compiled decode step, which must not read
        # tensors into Python ints); otherwise build it from the 2D padding mask.
        prepared = attention_mask is not None and attention_mask.dim() == 4
        mask = attention_mask if prepared else None
        if position_ids is None or not prepared:
            past = cache.get_seq_length() if cache is not None else 0
            if cache_position is not None:
                past = int(cache_position[0])
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=x.device).unsqueeze(0)
        if not prepared:
            kv_len = getattr(cache, "max_cache_len", past + T)
            mask = causal_mask(attention_mask, past, T, kv_len, x.device, self.config.attention_window)
        position_embeddings = self.rotary_emb(x, position_ids)

        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, position_embeddings, mask, cache)
            if hidden_states is not None:
                hidden_states.append(x)
        x = self.norm(x)
        if hidden_states is not None:
            hidden_states[-1] = x  # the last entry is the normed output, as in transformers
        return ModelOutput(
            last_hidden_state=x,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )


class LlamaForCausalLM(LlamaPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> ModelOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return ModelOutput(
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        self.score = Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> ModelOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        logits = self.score(out.last_hidden_state)
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError(
                "Batches of more than one sequence need config.pad_token_id to find each last token."
            )
        if pad is None or input_ids is None:
            last = torch.full((B,), -1, device=logits.device)
        else:
            # the last position that is not padding (works for left and right padding)
            idx = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (idx * (input_ids != pad).to(torch.int32)).argmax(-1)
        pooled = logits[torch.arange(B, device=logits.device), last]
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(pooled.squeeze().float(), labels.squeeze().float())
            else:
                loss = F.cross_entropy(pooled.float().view(-1, self.num_labels), labels.view(-1))
        return ModelOutput(
            loss=loss, logits=pooled, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of each position predicting the next label, in float32."""
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        shifted.reshape(-1).to(logits.device),
        ignore_index=ignore_index,
    )


LlamaPreTrainedModel.base_model_class = LlamaModel
