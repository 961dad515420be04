"""Mistral family: Mistral 7B v0.1-v0.3, Mistral-Nemo-shaped configs and their fine-tunes.

Llama's blocks and parameter names (see llama.py); what differs is data: every layer attends over the
last `sliding_window` tokens (4096 when config.json does not say, null for none), there are no biases,
and the defaults are Mistral 7B's. The native decode step reads the same description as Llama's.
"""

from __future__ import annotations

from ..kernels.decoder import Decoder
from .heads import ScoreTokenClassificationHead
from .llama import (
    LlamaConfig,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    LlamaPreTrainedModel,
    describe_stack,
)


class MistralConfig(LlamaConfig):
    model_type = "mistral"
    defaults = {
        **LlamaConfig.defaults,
        "intermediate_size": 14336,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "rms_norm_eps": 1e-6,
        "sliding_window": 4096,
    }

    @property
    def attention_window(self) -> int | None:
        return self.sliding_window

    # transformers' Mistral has no biases, whatever config.json says (the value read is kept for saving)
    @property
    def attention_bias(self) -> bool:
        return False

    @attention_bias.setter
    def attention_bias(self, value) -> None:
        self.__dict__["_attention_bias"] = value

    @property
    def mlp_bias(self) -> bool:
        return False

    @mlp_bias.setter
    def mlp_bias(self, value) -> None:
        self.__dict__["_mlp_bias"] = value

    def _derived_layer_types(self) -> list[str]:
        # transformers' Mistral has no layer_types: one mask for every layer, windowed when set
        kind = "full_attention" if self.sliding_window is None else "sliding_attention"
        return [kind] * self.num_hidden_layers


class MistralPreTrainedModel(LlamaPreTrainedModel):
    config_class = MistralConfig


class MistralModel(MistralPreTrainedModel, LlamaModel):
    pass


MistralPreTrainedModel.base_model_class = MistralModel


class MistralForCausalLM(MistralPreTrainedModel, LlamaForCausalLM):
    def describe_decoder(self) -> Decoder | None:
        """The native decode step's description (each layer's window comes with its attention type)."""
        return describe_stack(self, MistralForCausalLM, MistralModel, LlamaDecoderLayer)


class MistralForSequenceClassification(MistralPreTrainedModel, LlamaForSequenceClassification):
    pass


class MistralForTokenClassification(ScoreTokenClassificationHead, MistralPreTrainedModel):
    pass
