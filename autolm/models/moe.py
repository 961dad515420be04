"""Mixture-of-experts blocks shared by the Qwen MoE families (qwen3_moe.py, qwen2_moe.py): the top-k
router, the experts (only the selected ones run, on the tokens routed to them), the sparse block with
an optional shared expert, the decoder layer, router-logit capture, the load-balancing loss, and the
checkpoint layouts experts come in.

Experts keep the Hub's names, one module per expert (`mlp.experts.N.gate_proj.weight`), so the Hub's
checkpoints load as they are and `save_pretrained` writes what transformers reads.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_utils import ModelOutput
from .heads import CausalLMHead, causal_lm_loss
from .layers import Linear, RMSNorm, projection, same_code
from .llama import LlamaMLP, dense_mlp, describe_stack


def route(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k experts and their weights (softmax in float32, optionally renormalised over
    the k chosen, cast back to the logits' dtype), as transformers' router computes them."""
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, top_k, dim=-1)  # (N, k)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), experts


def run_experts(
    experts: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """Sum over each token's chosen experts of weight * expert(token); an expert runs once, on the rows
    routed to it, and an expert no token chose does not run.

    x: (N, hidden); weights, chosen: (N, k).
    """
    N, k = chosen.shape
    out = torch.zeros_like(x)
    if N == 1:
        # decoding one token: k expert calls on one row, nothing to sort (experts in index order, as below)
        for slot in sorted(range(k), key=lambda j: int(chosen[0, j])):
            out += experts[int(chosen[0, slot])](x) * weights[:, slot : slot + 1]
        return out
    flat = chosen.reshape(-1)
    order = flat.argsort(stable=True)  # slots grouped by expert
    counts = torch.bincount(flat, minlength=len(experts)).tolist()
    rows = order // k  # the token of each sorted slot
    slot_weights = weights.reshape(-1)[order, None]
    start = 0
    for expert, n in enumerate(counts):
        if n:
            tokens = rows[start : start + n]
            y = experts[expert](x[tokens]) * slot_weights[start : start + n]
            out.index_add_(0, tokens, y.to(out.dtype))
            start += n
    return out


class SparseMoeBlock(nn.Module):
    """Router (`gate`) + experts; with `shared_expert_intermediate_size` (Qwen2-MoE) also a shared expert
    every token goes through, scaled by a sigmoid gate of its own (`shared_expert_gate`)."""

    def __init__(self, config, shared: bool = False):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        h = config.hidden_size
        self.gate = Linear(h, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            LlamaMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        if shared:
            self.shared_expert = LlamaMLP(config, config.shared_expert_intermediate_size)
            self.shared_expert_gate = Linear(h, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (B*T, hidden)
        router_logits = self.gate(flat)  # (B*T, experts); captured by `record_router_logits`
        weights, chosen = route(router_logits, self.top_k, self.norm_topk_prob)
        out = run_experts(self.experts, flat, weights, chosen)
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.reshape(shape)


def is_sparse_layer(config, layer_idx: int) -> bool:
    """transformers' rule: MoE unless listed in `mlp_only_layers`, on every `decoder_sparse_step`-th
    layer."""
    return (
        layer_idx not in (config.mlp_only_layers or [])
        and config.num_experts > 0
        and (layer_idx + 1) % config.decoder_sparse_step == 0
    )


class MoeDecoderLayer(nn.Module):
    """Llama's pre-norm layer with a sparse block (or, on dense layers, a plain MLP of
    `intermediate_size`)."""

    shared_expert = False  # Qwen2-MoE's layers set it

    def __init__(self, config, layer_idx: int, attention_class: type[nn.Module]):
        super().__init__()
        self.self_attn = attention_class(config, layer_idx)
        if is_sparse_layer(config, layer_idx):
            self.mlp = SparseMoeBlock(config, shared=self.shared_expert)
        else:
            self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, position_embeddings, masks, cache, attentions: list | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_embeddings, masks, cache, attentions)
        return x + self.mlp(self.post_attention_layernorm(x))


class MoeModelMixin:
    """The base model's forward plus `router_logits` (one (B*T, experts) tensor per sparse layer) when
    `output_router_logits` (or config.output_router_logits) asks for them."""

    def forward(
        self, *args, output_router_logits: bool | None = None, return_dict: bool | None = None, **kwargs
    ):
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if not output_router_logits:
            return super().forward(*args, return_dict=return_dict, **kwargs)
        recorded: list[torch.Tensor] = []
        hooks = [
            m.gate.register_forward_hook(lambda module, inputs, output: recorded.append(output))
            for m in self.modules()
            if isinstance(m, SparseMoeBlock)
        ]
        try:
            out = super().forward(*args, return_dict=True, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        out["router_logits"] = tuple(recorded)
        return out if self.config.return_dict_for(return_dict) else out.to_tuple()


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask=None
) -> torch.Tensor:
    """Switch Transformer's auxiliary loss over all sparse layers: num_experts * sum over experts of
    (share of top-k assignments) * (mean router probability), padding excluded when a 2-D mask is given."""
    if not router_logits:
        return torch.zeros(())
    device = router_logits[0].device
    assigned = torch.zeros(num_experts, dtype=torch.float32, device=device)
    prob = torch.zeros(num_experts, dtype=torch.float32, device=device)
    rows = 0.0
    mask = None if attention_mask is None else attention_mask.reshape(-1).to(device, torch.float32)
    for logits in router_logits:
        probs = F.softmax(logits.to(device), dim=-1)
        _, chosen = torch.topk(probs, top_k, dim=-1)
        if mask is None:
            assigned = assigned + torch.bincount(chosen.reshape(-1), minlength=num_experts).float()
            prob = prob + probs.float().sum(dim=0)
            rows = rows + probs.shape[0]
        else:
            assigned = assigned + torch.zeros_like(assigned).scatter_add_(
                0, chosen.reshape(-1), mask.repeat_interleave(top_k)
            )
            prob = prob + (probs.float() * mask[:, None]).sum(dim=0)
            rows = rows + mask.sum()
    return (assigned / rows * (prob / rows)).sum() * num_experts


class MoeCausalLMHead(CausalLMHead):
    """Causal LM head that also returns `aux_loss` and `router_logits` when router logits are asked for,
    adding `router_aux_loss_coef * aux_loss` to the loss when labels are given (transformers' order:
    loss, aux_loss, logits, past_key_values, hidden_states, attentions, router_logits)."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> ModelOutput | tuple:
        c = self.config
        if output_router_logits is None:
            output_router_logits = c.output_router_logits
        out = self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_router_logits=output_router_logits,
            return_dict=True,
            **kwargs,
        )
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        aux_loss = None
        if output_router_logits:
            mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            aux_loss = load_balancing_loss(out.router_logits, c.num_experts, c.num_experts_per_tok, mask)
            if loss is not None:
                loss = loss + c.router_aux_loss_coef * aux_loss.to(loss.device)
        result = ModelOutput(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            router_logits=out.get("router_logits"),
        )
        return result if c.return_dict_for(return_dict) else result.to_tuple()

    def describe_decoder(self):
        """The native decode step's description: Llama's stack, each sparse layer's router, experts and
        shared expert as plain data (kernels/decoder.py `Moe`); None when router logits are asked for (they
        come from the torch code) or a module's code differs from these files'."""
        if self.config.output_router_logits:
            return None
        return describe_stack(self, MoeCausalLMHead, MoeModelMixin, MoeDecoderLayer, sparse_mlp)


def sparse_mlp(mlp) -> dict | None:
    """A layer's MLP for the native step: a dense one as Llama's, a SparseMoeBlock as a `Moe`."""
    from ..kernels.decoder import Moe

    if not isinstance(mlp, SparseMoeBlock):
        return dense_mlp(mlp)
    shared = getattr(mlp, "shared_expert", None)
    experts = [dense_mlp(e) for e in mlp.experts]
    if not (
        same_code(mlp, SparseMoeBlock, "forward")
        and same_code(mlp.gate, Linear, "forward")
        and all(e is not None for e in experts)
        and (shared is None or same_code(mlp.shared_expert_gate, Linear, "forward"))
    ):
        return None
    shared_part = None if shared is None else dense_mlp(shared)
    if shared is not None and shared_part is None:
        return None
    moe = Moe(
        router=projection(mlp.gate),
        experts=[(e["gate"], e["up"], e["down"]) for e in experts],
        top_k=mlp.top_k,
        normalize=bool(mlp.norm_topk_prob),
        shared=None if shared is None else (shared_part["gate"], shared_part["up"], shared_part["down"]),
        shared_gate=None if shared is None else projection(mlp.shared_expert_gate),
    )
    return dict(moe=moe)


# --- checkpoint layouts -----------------------------------------------------------------------------

# transformers 5's in-memory layout: all experts in two 3-D parameters per layer
_FUSED = re.compile(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")
# one 3-D tensor per projection (GGUF's ffn_*_exps, named by the GGUF table)
_STACKED = re.compile(r"(.*\.mlp\.experts)\.(gate_proj|up_proj|down_proj)\.weight$")


def split_experts(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint experts in any layout -> one (out, in) matrix per expert under the Hub's names, as views
    of the stored tensors (no copies).

    Layouts: the Hub's (`experts.N.gate_proj.weight`, kept), transformers 5's fused
    (`experts.gate_up_proj` (E, 2*I, H) with gate rows first, `experts.down_proj` (E, H, I)) and
    stacked per projection (`experts.gate_proj.weight` (E, I, H), ...).
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        fused, stacked = _FUSED.match(name), _STACKED.match(name)
        if fused and tensor.dim() == 3:
            prefix, kind = fused.groups()
            for e in range(tensor.shape[0]):
                if kind == "gate_up_proj":
                    gate, up = tensor[e].chunk(2, dim=0)
                    out[f"{prefix}.{e}.gate_proj.weight"] = gate
                    out[f"{prefix}.{e}.up_proj.weight"] = up
                else:
                    out[f"{prefix}.{e}.down_proj.weight"] = tensor[e]
        elif stacked and tensor.dim() == 3:
            prefix, kind = stacked.groups()
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.{kind}.weight"] = tensor[e]
        elif name.endswith(".mlp.shared_expert_gate.weight") and tensor.dim() == 1:
            out[name] = tensor.view(1, -1)  # GGUF may store the (1, hidden) gate as a vector
        else:
            out[name] = tensor
    return out


class MoeSanitize:
    def sanitize(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return split_experts(state_dict)
