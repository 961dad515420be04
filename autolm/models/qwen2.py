"""Qwen2 family: Qwen1.5, Qwen2, Qwen2.5. Llama's blocks with biases on q/k/v (none on o)."""

from __future__ import annotations

from .layers import Linear
from .llama import (
    LlamaAttention,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    LlamaPreTrainedModel,
)


class Qwen2Config(LlamaConfig):
    model_type = "qwen2"
    defaults = {
        **LlamaConfig.defaults,
        "vocab_size": 151936,
        "intermediate_size": 22016,
        "max_position_embeddings": 32768,
        "bos_token_id": None,
        "eos_token_id": None,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
    }

    _reads_layer_types = True  # transformers' Qwen2 honours config.json's layer_types (LlamaConfig does not)

    @property
    def attention_window(self) -> int | None:
        # checkpoints in use ship with the window off
        return self.sliding_window if self.use_sliding_window else None

    def _derived_layer_types(self) -> list[str]:
        # layers from max_window_layers on slide, when the window is on (transformers' derivation)
        window = self.attention_window is not None
        return [
            "sliding_attention" if window and i >= self.max_window_layers else "full_attention"
            for i in range(self.num_hidden_layers)
        ]


class Qwen2Attention(LlamaAttention):
    def make_projections(self, config: Qwen2Config) -> None:
        h, d = config.hidden_size, self.head_dim
        self.q_proj = Linear(h, config.num_attention_heads * d, bias=True)
        self.k_proj = Linear(h, config.num_key_value_heads * d, bias=True)
        self.v_proj = Linear(h, config.num_key_value_heads * d, bias=True)
        self.o_proj = Linear(config.num_attention_heads * d, h, bias=False)


class Qwen2PreTrainedModel(LlamaPreTrainedModel):
    config_class = Qwen2Config
    attention_class = Qwen2Attention


class Qwen2Model(Qwen2PreTrainedModel, LlamaModel):
    pass


Qwen2PreTrainedModel.base_model_class = Qwen2Model


class Qwen2ForCausalLM(Qwen2PreTrainedModel, LlamaForCausalLM):
    pass


class Qwen2ForSequenceClassification(Qwen2PreTrainedModel, LlamaForSequenceClassification):
    pass
