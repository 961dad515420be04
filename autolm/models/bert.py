"""BERT family: BERT, MiniLM and sentence-transformers encoders with BERT's layout.

Defaults -> embeddings -> self-attention -> layer -> encoder/base model -> pooler -> task heads. Names
follow transformers' (`bert.encoder.layer.0.attention.self.query.weight`), so checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..configuration import PretrainedConfig
from ..errors import AutolmValueError, ConfigError
from ..modeling_utils import ModelOutput, PreTrainedModel
from .heads import SequenceClassificationHead
from .layers import activation, attention, check_activation


class BertConfig(PretrainedConfig):
    model_type = "bert"
    defaults = {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "classifier_dropout": None,
        "problem_type": None,
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    }

    def __post_init__(self) -> None:
        check_activation(self)
        kind = self.position_embedding_type
        if kind not in (None, "absolute"):
            source = self._source_file or "the config"
            raise ConfigError(
                f"{source}: position_embedding_type {kind!r} is not supported (transformers 5 dropped it "
                'too); only "absolute" is. Fix position_embedding_type in config.json.',
                key="position_embedding_type",
            )


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)[None]
        if token_type_ids is None:
            # every token in segment A: row 0 of the table, broadcast (no (B, T) lookup)
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """`query`, `key`, `value` stay three Linears (transformers' names); for inference they are run as one
    fused (3 * hidden) product over a weight they are laid out in (see `fused_qkv`)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        h, heads = config.hidden_size, config.num_attention_heads
        self.num_attention_heads = heads
        self.attention_head_size = h // heads
        self.scaling = self.attention_head_size**-0.5
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (3h, h) weight and (3h,) bias of q, k, v together. Without gradients the three Linears'
        tensors are made views of one buffer on first use (same Parameters, same values), so the fused
        product reads them in place; with gradients, a concatenation autograd sees through."""
        linears = (self.query, self.key, self.value)
        if torch.is_grad_enabled() and any(p.requires_grad for m in linears for p in m.parameters()):
            return torch.cat([m.weight for m in linears]), torch.cat([m.bias for m in linears])
        fused = self.__dict__.get("_fused")
        if fused is None or not _views_of(fused, linears):
            with torch.inference_mode(False), torch.no_grad():
                w = torch.cat([m.weight.detach() for m in linears])
                b = torch.cat([m.bias.detach() for m in linears])
                n = self.query.weight.shape[0]
                for i, m in enumerate(linears):
                    m.weight.data = w[i * n : (i + 1) * n]
                    m.bias.data = b[i * n : (i + 1) * n]
            fused = self.__dict__["_fused"] = (w, b)
        return fused

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, attentions: list | None) -> torch.Tensor:
        B, T, _ = x.shape
        weight, bias = self.fused_qkv()
        qkv = kernels.encoder_linear(x, weight, bias) if _fused_ok(x, weight) else None
        if qkv is None:
            qkv = F.linear(x, weight, bias)
        # (3, B, heads, T, head_dim) as strided views: sdpa reads them without a copy
        q, k, v = qkv.view(B, T, 3, self.num_attention_heads, self.attention_head_size).permute(2, 0, 3, 1, 4)
        if attentions is not None or self.config._attn_implementation == "eager":
            out, probs = attention(q, k, v, mask, self.scaling, "eager", output_weights=True)
            if attentions is not None:
                attentions.append(probs)
        else:
            p = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scaling)
            out = out.transpose(1, 2)  # (B, T, heads, head_dim)
        return out.reshape(B, T, -1)


def _views_of(fused: tuple[torch.Tensor, torch.Tensor], linears) -> bool:
    w, b = fused
    n = linears[0].weight.shape[0]
    return all(
        m.weight.data_ptr() == w[i * n].data_ptr()
        and m.bias.data_ptr() == b[i * n :].data_ptr()
        and m.weight.dtype == w.dtype
        and m.weight.device == w.device
        for i, m in enumerate(linears)
    )


def _fused_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a product of x's rows takes the fused CPU passes (kernels.encoder_linear, add_norm):
    inference (no autograd) on the CPU in float32, and enough rows to matter."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 3
        and x.shape[0] * x.shape[1] >= 64
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class BertSelfOutput(nn.Module):
    """Projection, dropout, then LayerNorm over the residual sum (post-norm)."""

    def __init__(self, config: BertConfig, size_in: int):
        super().__init__()
        self.dense = nn.Linear(size_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout.p > 0:
            return self.LayerNorm(self.dropout(self.dense(x)) + residual)
        fused = self.fused_output(x, residual)
        if fused is not None:
            return fused
        # the product accumulated into (residual + bias): one pass over the output fewer than
        # dense(x) + residual, whose addmm first copies the bias into a fresh output
        out = residual + self.dense.bias
        out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), self.dense.weight.t())
        return self.LayerNorm(out)

    def fused_output(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor | None:
        """LayerNorm(x W^T + b + residual) as the product alone, then one native pass for the bias,
        the residual and the norm (three passes over the activations in torch); None when the native
        kernels are not loaded or the modules are not this file's."""
        norm = self.LayerNorm
        if not (
            type(norm) is nn.LayerNorm and type(self.dense) is nn.Linear and _fused_ok(x, self.dense.weight)
        ):
            return None
        if not kernels.ensure_loaded(compile=False):
            return None
        if norm.weight is None:
            return None
        product = kernels.encoder_linear(x, self.dense.weight, self.dense.bias)
        bias = None
        if product is None:  # MKL's product, the bias added in the native pass
            product, bias = torch.mm(x.reshape(-1, x.shape[-1]), self.dense.weight.t()), self.dense.bias
        product = product.reshape(-1, product.shape[-1])
        out = kernels.add_norm(
            product,
            bias,
            residual.reshape(product.shape),
            norm.weight,
            norm.eps,
            "layer",
            norm.bias,
        )
        return None if out is None else out.view(residual.shape)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, x, mask, attentions: list | None = None) -> torch.Tensor:
        return self.output(self.self(x, mask, attentions), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)
        self.hidden_act = config.hidden_act if isinstance(config.hidden_act, str) else "?"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.dense) is nn.Linear and _fused_ok(x, self.dense.weight):
            # the product, its bias and the activation in one oneDNN pass where that is faster
            out = kernels.encoder_linear(x, self.dense.weight, self.dense.bias, self.hidden_act)
            if out is not None:
                return out
        return self.intermediate_act_fn(self.dense(x))


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig):
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x, mask, attentions: list | None = None) -> torch.Tensor:
        x = self.attention(x, mask, attentions)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x, mask, hidden_states: list | None, attentions: list | None) -> torch.Tensor:
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layer:
            if checkpointing:
                x = self._gradient_checkpointing_func(layer, x, mask, attentions)
            else:
                x = layer(x, mask, attentions)
            if hidden_states is not None:
                hidden_states.append(x)
        return x


class BertPooler(nn.Module):
    """tanh(dense(first token)): the [CLS] summary the sequence classifier reads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x[:, 0]))


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True

    def _init_module(self, module: nn.Module) -> None:
        super()._init_module(module)
        if isinstance(module, nn.LayerNorm):
            with torch.no_grad():
                module.weight.fill_(1.0)
                module.bias.zero_()
        elif isinstance(module, BertLMPredictionHead):
            with torch.no_grad():
                module.bias.zero_()


class BertModel(BertPreTrainedModel):
    """Embeddings, the encoder and (with `add_pooling_layer`) the pooler; returns `last_hidden_state`,
    `pooler_output` (and `hidden_states`, `attentions`)."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise AutolmValueError("Pass exactly one of input_ids or inputs_embeds.")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        mask = padding_mask(attention_mask, x.shape[1])
        hidden_states = [x] if output_hidden_states else None
        attentions: list | None = [] if output_attentions else None
        x = self.encoder(x, mask, hidden_states, attentions)
        out = ModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            past_key_values=None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
        return out if self.config.return_dict_for(return_dict) else out.to_tuple()


def padding_mask(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """(B, 1, 1, T) boolean mask, True at the keys every query may see; None when nothing is padded (the
    fast path). A ready-made 4D mask is used as it is (boolean, or additive floats)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask
    if bool(attention_mask.all()):
        return None
    return attention_mask[:, None, None, :T].bool()


BertPreTrainedModel.base_model_class = BertModel


def _base_outputs(model: BertPreTrainedModel, input_ids, attention_mask, kwargs: dict) -> ModelOutput:
    kwargs.pop("use_cache", None)
    kwargs.pop("return_dict", None)
    return model.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)


def _dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout
    return nn.Dropout(config.hidden_dropout_prob if p is None else p)


def _output(config, return_dict, base: ModelOutput, **fields) -> ModelOutput | tuple:
    out = ModelOutput(**fields, hidden_states=base.hidden_states, attentions=base.attentions)
    return out if config.return_dict_for(return_dict) else out.to_tuple()


class BertForSequenceClassification(BertPreTrainedModel):
    """pooler -> dropout -> `classifier`; the loss follows config.problem_type (inferred when unset)."""

    classification_loss = SequenceClassificationHead.classification_loss

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        out = _base_outputs(self, input_ids, attention_mask, kwargs)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None if labels is None else self.classification_loss(logits, labels)
        return _output(self.config, return_dict, out, loss=loss, logits=logits)


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        out = _base_outputs(self, input_ids, attention_mask, kwargs)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.to(logits.device).view(-1))
        return _output(self.config, return_dict, out, loss=loss, logits=logits)


class BertForQuestionAnswering(BertPreTrainedModel):
    """`qa_outputs` gives a start and an end score per token; positions past the input are ignored."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        start_positions=None,
        end_positions=None,
        return_dict=None,
        **kwargs,
    ):
        out = _base_outputs(self, input_ids, attention_mask, kwargs)
        start, end = (t.squeeze(-1) for t in self.qa_outputs(out.last_hidden_state).split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.shape[1]  # a position clamped to the length counts for nothing
            losses = [
                F.cross_entropy(
                    logits, pos.view(-1).to(logits.device).clamp(0, ignored), ignore_index=ignored
                )
                for logits, pos in ((start, start_positions), (end, end_positions))
            ]
            loss = (losses[0] + losses[1]) / 2
        return _output(
            self.config,
            return_dict,
            out,
            loss=loss,
            start_logits=start.contiguous(),
            end_logits=end.contiguous(),
        )


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform -> `decoder` (its weight tied to the word embeddings, its bias the same tensor as
    `bias`, as checkpoints store it)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertForMaskedLM(BertPreTrainedModel):
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value
        self.cls.predictions.bias = value.bias

    def tied_keys(self) -> set[str]:
        # the decoder's bias is `cls.predictions.bias` whatever tie_word_embeddings says
        return super().tied_keys() | {"cls.predictions.decoder.bias"}

    def tie_weights(self) -> None:
        super().tie_weights()
        self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """As the base class; the output bias keeps its old entries and gets zeros for new tokens."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        predictions = self.cls.predictions
        n, old = embeddings.weight.shape[0], predictions.bias
        if old.shape[0] != n:
            bias = torch.zeros(n, dtype=old.dtype, device=old.device)
            bias[: min(n, old.shape[0])] = old.data[:n]
            predictions.bias = nn.Parameter(bias)
            self.tie_weights()
        return embeddings

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        out = _base_outputs(self, input_ids, attention_mask, kwargs)
        logits = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.to(logits.device).view(-1))
        return _output(self.config, return_dict, out, loss=loss, logits=logits)
