"""Qwen3 family: Llama's blocks with RMSNorm on each query and key head, and an explicit head_dim."""

from __future__ import annotations

from .layers import RMSNorm
from .llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    LlamaPreTrainedModel,
    norm_qk_per_head,
)
from .qwen2 import Qwen2Config


class Qwen3Config(Qwen2Config):
    """Qwen2's defaults (and its window switch) with a fixed head_dim."""

    model_type = "qwen3"
    defaults = {**Qwen2Config.defaults, "head_dim": 128}


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    norm_qk = norm_qk_per_head  # q, k: (B, T, heads, head_dim); the norms act per head


class Qwen3PreTrainedModel(LlamaPreTrainedModel):
    config_class = Qwen3Config
    attention_class = Qwen3Attention


class Qwen3Model(Qwen3PreTrainedModel, LlamaModel):
    pass


Qwen3PreTrainedModel.base_model_class = Qwen3Model


class Qwen3ForCausalLM(Qwen3PreTrainedModel, LlamaForCausalLM):
    pass


class Qwen3ForSequenceClassification(Qwen3PreTrainedModel, LlamaForSequenceClassification):
    pass
