"""Qwen3 family: Llama's blocks with RMSNorm on each query and key head, and an explicit head_dim."""

from __future__ import annotations

import torch

from .layers import RMSNorm
from .llama import (
    LlamaAttention,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    LlamaPreTrainedModel,
)


class Qwen3Config(LlamaConfig):
    model_type = "qwen3"
    defaults = {
        **LlamaConfig.defaults,
        "vocab_size": 151936,
        "intermediate_size": 22016,
        "head_dim": 128,
        "max_position_embeddings": 32768,
        "bos_token_id": None,
        "eos_token_id": None,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
    }

    @property
    def attention_window(self) -> int | None:
        return self.sliding_window if self.use_sliding_window else None


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q, k: (B, T, heads, head_dim); the norms act per head
        return self.q_norm(q), self.k_norm(k)


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
