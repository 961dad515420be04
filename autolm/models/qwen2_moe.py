"""Qwen2-MoE family (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases by `qkv_bias`)
with a sparse top-k mixture of experts plus a shared expert behind a sigmoid gate (moe.py)."""

from __future__ import annotations

from .heads import SequenceClassificationHead
from .layers import Linear
from .llama import LlamaAttention, LlamaModel, LlamaPreTrainedModel
from .moe import MoeCausalLMHead, MoeDecoderLayer, MoeModelMixin, MoeSanitize
from .qwen2 import Qwen2Config


class Qwen2MoeConfig(Qwen2Config):
    model_type = "qwen2_moe"
    defaults = {
        **Qwen2Config.defaults,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "decoder_sparse_step": 1,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_experts_per_tok": 4,
        "num_experts": 60,
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "mlp_only_layers": None,
        "qkv_bias": True,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlp_only_layers is None:
            self.mlp_only_layers = []

    def _derived_layer_types(self) -> list[str]:
        # transformers' derivation when config.json has no layer_types: every other layer below
        # max_window_layers slides, when the window is on
        window = self.attention_window is not None
        return [
            "sliding_attention" if window and (i + 1) % 2 and i < self.max_window_layers else "full_attention"
            for i in range(self.num_hidden_layers)
        ]


class Qwen2MoeAttention(LlamaAttention):
    def make_projections(self, config: Qwen2MoeConfig) -> None:
        h, d, bias = config.hidden_size, self.head_dim, config.qkv_bias
        self.q_proj = Linear(h, config.num_attention_heads * d, bias=bias)
        self.k_proj = Linear(h, config.num_key_value_heads * d, bias=bias)
        self.v_proj = Linear(h, config.num_key_value_heads * d, bias=bias)
        self.o_proj = Linear(config.num_attention_heads * d, h, bias=False)


class Qwen2MoeDecoderLayer(MoeDecoderLayer):
    shared_expert = True


class Qwen2MoePreTrainedModel(MoeSanitize, LlamaPreTrainedModel):
    config_class = Qwen2MoeConfig
    attention_class = Qwen2MoeAttention
    decoder_layer_class = Qwen2MoeDecoderLayer


class Qwen2MoeModel(MoeModelMixin, Qwen2MoePreTrainedModel, LlamaModel):
    pass


Qwen2MoePreTrainedModel.base_model_class = Qwen2MoeModel


class Qwen2MoeForCausalLM(MoeCausalLMHead, Qwen2MoePreTrainedModel):
    pass


class Qwen2MoeForSequenceClassification(SequenceClassificationHead, Qwen2MoePreTrainedModel):
    pass
