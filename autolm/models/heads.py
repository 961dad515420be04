"""Task heads shared by the families: causal LM, sequence classification (last token) and token
classification on any base model.

A family's head class is `class XForCausalLM(CausalLMHead, XPreTrainedModel)`: the head builds the base
model under the family's `base_model_prefix` (`self.model`, `self.transformer`, `self.bert`, ...) and
its own output layer, and reads the base model's `last_hidden_state`, so a head is written once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AutolmValueError
from ..modeling_utils import ModelOutput
from .layers import Linear


def _build_base(head, config) -> None:
    setattr(head, head.base_model_prefix, head.base_model_class(config))


class CausalLMHead:
    """Next-token logits from the base model's last hidden state (`lm_head`, tied to the embeddings when
    config.tie_word_embeddings)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        _build_base(self, config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def make_cache(self, batch_size: int, max_cache_len: int | None = None, dtype=None, device=None):
        return self.base_model.make_cache(batch_size, max_cache_len, dtype=dtype, device=device)

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
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> ModelOutput | tuple:
        out = self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return _output(self.config, return_dict, loss, logits, out)


class SequenceClassificationHead:
    """One score per label from the last non-padding token (`score`, no bias), as transformers' decoder
    ForSequenceClassification classes."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        _build_base(self, config)
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
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        out = self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.score(out.last_hidden_state)
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise AutolmValueError(
                "Batches of more than one sequence need config.pad_token_id to find each last token."
            )
        if pad is None or input_ids is None:
            last = torch.full((B,), -1, device=logits.device)
        else:
            # the last position that is not padding (works for left and right padding)
            idx = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (idx * (input_ids != pad).to(torch.int32)).argmax(-1)
        pooled = logits[torch.arange(B, device=logits.device), last]
        loss = None if labels is None else self.classification_loss(pooled, labels)
        return _output(self.config, return_dict, loss, pooled, out)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """By config.problem_type, set from the labels when None (transformers' rule): regression (MSE),
        single-label (cross-entropy) or multi-label (BCE with logits)."""
        problem = getattr(self.config, "problem_type", None)
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
            self.config.problem_type = problem
        labels = labels.to(logits.device)
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze().float(), labels.squeeze().float())
            return F.mse_loss(logits.float(), labels.float())
        if problem == "single_label_classification":
            return F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class TokenClassificationHead:
    """One score per label for every token (`classifier`, with bias, after dropout), as transformers'
    ForTokenClassification classes; cross-entropy over the labels that are not -100."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        _build_base(self, config)
        p = getattr(config, "classifier_dropout", None)
        if p is None:
            p = getattr(config, "hidden_dropout_prob", getattr(config, "hidden_dropout", 0.0)) or 0.0
        self.dropout = nn.Dropout(p)
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        kwargs.pop("use_cache", None)
        out = self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, self.num_labels), labels.to(logits.device).view(-1)
            )
        return _output(self.config, return_dict, loss, logits, out)


def _output(config, return_dict: bool | None, loss, logits, base: ModelOutput) -> ModelOutput | tuple:
    """A head's output in transformers' order (loss, logits, past_key_values, hidden_states, attentions);
    a tuple of the entries that are set when `return_dict=False`."""
    out = ModelOutput(
        loss=loss,
        logits=logits,
        past_key_values=base.past_key_values,
        hidden_states=base.hidden_states,
        attentions=base.attentions,
    )
    return out if config.return_dict_for(return_dict) else out.to_tuple()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of each position predicting the next label, in float32."""
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        shifted.reshape(-1).to(logits.device),
        ignore_index=ignore_index,
    )


class ScoreTokenClassificationHead(TokenClassificationHead):
    """TokenClassificationHead under transformers' generic name for its layer, `score` (Llama-shaped
    families: Mistral, Phi-3), with a bias unless config.token_classification_bias is false."""

    def __init__(self, config):
        super().__init__(config)
        layer = self._modules.pop("classifier")
        if not getattr(config, "token_classification_bias", True):
            layer = Linear(config.hidden_size, config.num_labels, bias=False)
        self.score = layer

    @property
    def classifier(self) -> nn.Linear:
        return self.score
