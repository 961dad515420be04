"""Qwen3-MoE family (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (RMSNorm per query and key head)
with a sparse top-k mixture of experts in place of the MLP (moe.py); dense MLP layers where
`mlp_only_layers` / `decoder_sparse_step` say so."""

from __future__ import annotations

from .heads import SequenceClassificationHead
from .llama import LlamaModel, LlamaPreTrainedModel
from .moe import MoeCausalLMHead, MoeDecoderLayer, MoeModelMixin, MoeSanitize
from .qwen2 import Qwen2Config
from .qwen3 import Qwen3Attention


class Qwen3MoeConfig(Qwen2Config):
    model_type = "qwen3_moe"
    defaults = {
        **Qwen2Config.defaults,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "decoder_sparse_step": 1,
        "moe_intermediate_size": 768,
        "num_experts_per_tok": 8,
        "num_experts": 128,
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "mlp_only_layers": None,
    }
    defaults.pop("max_window_layers")

    # transformers' Qwen3-MoE slides in every layer when the window is on (Mixtral's masks); it has no
    # per-layer types
    _reads_layer_types = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlp_only_layers is None:
            self.mlp_only_layers = []

    # transformers 5 writes the expert count as `num_local_experts`; the Hub's files say `num_experts`
    @property
    def num_local_experts(self) -> int:
        return self.num_experts

    @num_local_experts.setter
    def num_local_experts(self, value: int) -> None:
        self.num_experts = value

    def _derived_layer_types(self) -> list[str]:
        kind = "sliding_attention" if self.attention_window is not None else "full_attention"
        return [kind] * self.num_hidden_layers


class Qwen3MoePreTrainedModel(MoeSanitize, LlamaPreTrainedModel):
    config_class = Qwen3MoeConfig
    attention_class = Qwen3Attention
    decoder_layer_class = MoeDecoderLayer


class Qwen3MoeModel(MoeModelMixin, Qwen3MoePreTrainedModel, LlamaModel):
    pass


Qwen3MoePreTrainedModel.base_model_class = Qwen3MoeModel


class Qwen3MoeForCausalLM(MoeCausalLMHead, Qwen3MoePreTrainedModel):
    pass


class Qwen3MoeForSequenceClassification(SequenceClassificationHead, Qwen3MoePreTrainedModel):
    pass
