"""The native decode step for the Llama family (Llama, Mistral, Qwen2, Qwen3): all layers in one C call.

`native_decoder(model)` checks that the model is exactly the code in models/llama.py (no subclass that
overrides a forward, no hooks, SiLU MLP, weights fused and contiguous by generation/layout.py, one
dtype, CPU) and returns a `NativeDecoder`, or None, in which case generation runs the model's forward
as usual. Its `step` takes what `generation.loop.decode_one_token` takes and returns the same logits.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from . import _DTYPES, MAX_ROWS, library, linear

_I, _P = ctypes.c_int64, ctypes.c_void_p


class _Shape(ctypes.Structure):
    _fields_ = [(n, _I) for n in ("hidden", "heads", "kv_heads", "head_dim", "inter")] + [
        ("eps", ctypes.c_float),
        ("scaling", ctypes.c_float),
    ]


_LAYER_FIELDS = (
    "in_norm", "qkv_w", "qkv_b", "q_norm", "k_norm", "o_w", "o_b",
    "post_norm", "gate_up_w", "gate_up_b", "down_w", "down_b", "k_cache", "v_cache",
)  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [(n, _P) for n in _LAYER_FIELDS]


def _same_code(obj, cls, *methods: str) -> bool:
    return all(getattr(type(obj), m, None) is getattr(cls, m) for m in methods)


def native_decoder(model) -> NativeDecoder | None:
    """A NativeDecoder for `model`, or None when the native step does not apply (see the module doc)."""
    lib = library()
    if lib is None:
        return None
    from ..models.layers import Linear, RMSNorm
    from ..models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel
    from ..models.qwen3 import Qwen3Attention

    base = getattr(model, "model", None)
    if not (_same_code(model, LlamaForCausalLM, "forward") and _same_code(base, LlamaModel, "forward")):
        return None
    if getattr(model.config, "output_hidden_states", False) or model.config.hidden_act not in (
        "silu",
        "swish",
    ):
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()) or _global_hooks():
        return None
    dtype = model.lm_head.weight.dtype
    if dtype not in _DTYPES:
        return None
    layers = (_Layer * len(base.layers))()
    keep: list[torch.Tensor] = []  # everything the C side points at

    def ptr(t: torch.Tensor | None, rows: int, cols: int | None = None, required: bool = False) -> int | None:
        if t is None:
            if required:  # e.g. q/k/v not fused (layout.py did not run)
                raise _NotNative
            return None
        if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
            raise _NotNative
        if tuple(t.shape) != ((rows, cols) if cols is not None else (rows,)):
            raise _NotNative
        keep.append(t)
        return t.data_ptr()

    c = model.config
    H, KVH = c.num_attention_heads, c.num_key_value_heads
    first = base.layers[0].self_attn
    D, E, I = first.head_dim, c.hidden_size, c.intermediate_size  # noqa: E741
    eps = {base.norm.variance_epsilon}
    try:
        for i, layer in enumerate(base.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qwen3 = _same_code(attn, Qwen3Attention, "norm_qk")
            norms = [layer.input_layernorm, layer.post_attention_layernorm] + (
                [attn.q_norm, attn.k_norm] if qwen3 else []
            )
            if not (
                _same_code(layer, LlamaDecoderLayer, "forward")
                and _same_code(attn, LlamaAttention, "forward", "project")
                and (qwen3 or _same_code(attn, LlamaAttention, "norm_qk"))
                and _same_code(mlp, LlamaMLP, "forward")
                and all(_same_code(n, RMSNorm, "forward") for n in norms)
                and all(
                    _same_code(lin, Linear, "forward") for lin in (attn.o_proj, mlp.down_proj, model.lm_head)
                )
                and attn.head_dim == D
                and attn.scaling == first.scaling
                and mlp.act_fn is F.silu
            ):
                return None
            eps.update(n.variance_epsilon for n in norms)
            layers[i] = _Layer(
                in_norm=ptr(layer.input_layernorm.weight, E, required=True),
                qkv_w=ptr(attn.qkv_weight, (H + 2 * KVH) * D, E, required=True),
                qkv_b=ptr(attn.qkv_bias, (H + 2 * KVH) * D),
                q_norm=ptr(attn.q_norm.weight, D, required=True) if qwen3 else None,
                k_norm=ptr(attn.k_norm.weight, D, required=True) if qwen3 else None,
                o_w=ptr(attn.o_proj.weight, E, H * D, required=True),
                o_b=ptr(attn.o_proj.bias, E),
                post_norm=ptr(layer.post_attention_layernorm.weight, E, required=True),
                gate_up_w=ptr(mlp.gate_up_weight, 2 * I, E, required=True),
                gate_up_b=ptr(mlp.gate_up_bias, 2 * I),
                down_w=ptr(mlp.down_proj.weight, E, I, required=True),
                down_b=ptr(mlp.down_proj.bias, E),
            )
        ptr(base.norm.weight, E, required=True)
        if model.lm_head.weight.device.type != "cpu" or model.lm_head.weight.stride(1) != 1:
            return None
    except (_NotNative, AttributeError):
        return None
    if len(eps) != 1 or H % KVH:
        return None
    shape = _Shape(hidden=E, heads=H, kv_heads=KVH, head_dim=D, inter=I, eps=eps.pop(), scaling=first.scaling)
    return NativeDecoder(model, lib, shape, layers, keep, dtype)


class _NotNative(Exception):
    pass


def _global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


class NativeDecoder:
    def __init__(self, model, lib, shape: _Shape, layers, keep: list[torch.Tensor], dtype: torch.dtype):
        self.model, self.lib, self.shape, self.layers, self.keep = model, lib, shape, layers, keep
        self.dtype, self.code = dtype, _DTYPES[dtype]
        self.bound: tuple | None = None  # which cache buffers `layers` points at

    def step(self, token, position_ids, attention_mask, cache, cache_position=None) -> torch.Tensor | None:
        """Logits (B, vocab) float32 for one new token per row, as `decode_one_token`; None when this
        call does not fit the native step (the caller then runs the model)."""
        from ..models.cache import DynamicCache, StaticCache
        from ..models.layers import causal_mask

        B = token.shape[0]
        if B > MAX_ROWS or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        model, base = self.model, self.model.model
        if isinstance(cache, StaticCache) and cache_position is not None:
            keys, values, slot = cache.keys, cache.values, int(cache_position[0])
            S = cache.max_cache_len
        elif isinstance(cache, DynamicCache) and len(cache) == len(self.layers):
            slot = cache.get_seq_length()
            keys, values = cache.reserve(slot + 1)
            S = slot + 1
        else:
            return None
        k0 = keys[0]
        if k0.dtype != self.dtype or k0.shape[0] != B or k0.stride(-1) != 1:
            return None
        bound = (id(cache), k0.data_ptr(), keys[-1].data_ptr(), values[-1].data_ptr())
        if bound != self.bound:
            if any(t.stride() != k0.stride() for t in (*keys, *values)):
                return None
            for layer, k, v in zip(self.layers, keys, values):
                layer.k_cache, layer.v_cache = k.data_ptr(), v.data_ptr()
            self.bound = bound
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask
        else:
            mask = causal_mask(attention_mask, slot, 1, S, token.device, model.config.attention_window)
        if mask is not None:
            if mask.shape[-1] != S or mask.shape[2] != 1:
                return None
            mask = mask[:, 0, 0].expand(B, S)
        x = base.embed_tokens(token[:, None])  # (B, 1, E), a new tensor the C side updates in place
        cos, sin = (t.reshape(B, -1).contiguous() for t in base.rotary_emb(x, position_ids))
        strides = (_I * 3)(*k0.stride()[:3])
        self.lib.autolm_decode(
            self.code, ctypes.byref(self.shape), self.layers, len(self.layers), x.data_ptr(), B,
            cos.data_ptr(), sin.data_ptr(), strides, slot, S,
            None if mask is None else mask.data_ptr(), *(mask.stride() if mask is not None else (0, 0)),
            torch.get_num_threads(),
        )  # fmt: skip
        if isinstance(cache, StaticCache):
            cache.mark_written(slot)
        else:
            cache.advance(1)
        return linear(base.norm(x), model.lm_head.weight)[:, -1].float()
