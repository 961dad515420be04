"""The native decode step: every layer of a pre-norm decoder in one C call, for any family that
describes itself.

A family's causal LM exports `describe_decoder()` -> `Decoder` (or None when its current modules are
not what the description covers, e.g. a user subclass that overrides a forward): plain data naming,
per layer, its norms (kind, weight, bias, eps, offset), projections (weight, bias), activation, q/k
norms, extra norms after attention and MLP, scaling and attention type, plus three callables in the
family's own torch code: `embed`, `rotary` and `head`, and `masks` for the attention masks per type.
`native_decoder(model)` turns that into the C structs of `cpu.c` (a descriptor per weight tensor:
pointer, type, row bytes) and returns a `NativeDecoder`, or None, in which case generation runs the
model's forward as usual. This module never imports `models/`: the model's meaning lives once, in its
torch code, and in the description it exports.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _DTYPES, MAX_ROWS, library

_I, _P, _F = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float

NORM_KINDS = {None: 0, "rms": 1, "rms_float": 2, "layer": 3}
ACTIVATIONS = {
    "silu": 0,
    "swish": 0,
    "gelu_pytorch_tanh": 1,
    "gelu_tanh": 1,
    "gelu_new": 1,
    "gelu": 2,
    "relu": 3,
}


@dataclass
class Norm:
    """kind "rms": w * round(x * rsqrt(mean(x^2) + eps)) (Llama); "rms_float": round(x * rsqrt(...) *
    (offset + w)) in float32 (Gemma); "layer": LayerNorm with optional bias."""

    weight: torch.Tensor
    eps: float
    kind: str = "rms"
    bias: torch.Tensor | None = None
    offset: float = 0.0


@dataclass
class Projection:
    """y = x W^T + b, W (out, in) with contiguous rows; `transposed`: y = x W + b, W (in, out) with
    contiguous rows (GPT-2's Conv1D; a column slice of a wider matrix is fine)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    transposed: bool = False


@dataclass
class Moe:
    """A sparse mixture-of-experts MLP: softmax (float32) over `router`'s logits, each row's `top_k` experts
    (their weights renormalised over the k when `normalize`, then rounded to the model's dtype), each a
    gated MLP (gate, up, down), added in expert order; with `shared`, a gated MLP every row goes through,
    scaled by sigmoid(`shared_gate` x) (Qwen2-MoE)."""

    router: Projection
    experts: list[tuple[Projection, Projection, Projection]]
    top_k: int
    normalize: bool
    shared: tuple[Projection, Projection, Projection] | None = None
    shared_gate: Projection | None = None


@dataclass
class Layer:
    attn_norm: Norm
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    mlp_norm: Norm
    scaling: float
    up: Projection | None = None  # None only with `moe`
    down: Projection | None = None
    gate: Projection | None = None  # None: a plain MLP, act(up(x))
    activation: str = "silu"
    q_norm: Norm | None = None  # per head, before rotary
    k_norm: Norm | None = None
    attn_out_norm: Norm | None = None  # applied to the attention output before the residual add
    mlp_out_norm: Norm | None = None
    attention_type: str = "full_attention"
    moe: Moe | None = None  # in place of gate/up/down
    # a cross-attention block after the self-attention (T5's decoder): its pre-norm, q and o projections;
    # the keys/values of the encoder output come with each step (`NativeDecoder.step(cross_kv=...)`)
    cross_norm: Norm | None = None
    cross_q: Projection | None = None
    cross_o: Projection | None = None
    cross_scaling: float = 1.0


@dataclass
class Decoder:
    layers: list[Layer]
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rotary_dim: int  # 0: no rotary
    embed: Callable[[torch.Tensor], torch.Tensor]  # token ids (B, 1) -> (B, 1, hidden)
    rotary: Callable | None  # (x, position_ids) -> (cos, sin), each (B, 1, rotary_dim)
    # (attention_mask, past_len, kv_len, cache_position) -> {attention type: (B|1, 1, 1, kv_len) mask or None}
    masks: Callable
    head: Callable[[torch.Tensor], torch.Tensor]  # (B, 1, hidden) after the last layer -> logits
    modules: list[torch.nn.Module] = field(default_factory=list)  # checked for hooks
    # learned absolute positions: position ids (B, 1) -> (B, 1, hidden), added to the embeddings (GPT-2)
    positions: Callable[[torch.Tensor], torch.Tensor] | None = None
    # the queries' scale after rotary for a token at this cache slot, in the model's dtype (Qwen-1's logn
    # attention); None: 1
    query_scale: Callable[[int], float] | None = None
    # (slot, kv_len) -> a float bias added to every layer's self-attention scores of the query at this
    # slot, broadcastable to (B, heads, 1, kv_len) (T5's relative positions); None: none
    position_bias: Callable[[int, int], torch.Tensor | None] | None = None
    # one rotary per attention type, (x, position_ids) -> (cos, sin) as `rotary`, for the layers of that
    # type (Gemma 3: local and global bases); None: every layer takes `rotary`'s
    rotaries: dict[str, Callable] | None = None


class _Proj(ctypes.Structure):
    _fields_ = [("w", _P), ("b", _P), ("wtype", _I), ("btype", _I), ("row_bytes", _I), ("transposed", _I)]


class _Norm(ctypes.Structure):
    _fields_ = [("w", _P), ("b", _P), ("type", _I), ("kind", _I), ("eps", _F), ("offset", _F)]


class _Shape(ctypes.Structure):
    _fields_ = [(n, _I) for n in ("hidden", "heads", "kv_heads", "head_dim", "inter", "rotary_dim")]


_NORMS = ("attn_norm", "q_norm", "k_norm", "attn_out_norm", "mlp_norm", "mlp_out_norm")
_PROJS = ("q", "k", "v", "o", "gate", "up", "down")


class _Layer(ctypes.Structure):
    _fields_ = (
        [(n, _Norm) for n in _NORMS]
        + [(n, _Proj) for n in _PROJS]
        + [
            ("act", _I),
            ("scaling", _F),
            ("mask", _P),
            ("mb", _I),
            ("ms", _I),
            ("k_cache", _P),
            ("v_cache", _P),
            ("moe", _P),
            ("qscale", _F),
            ("bias", _P),
            ("bb", _I),
            ("bh", _I),
            ("cross_norm", _Norm),
            ("cross_q", _Proj),
            ("cross_o", _Proj),
            ("cross_scaling", _F),
            ("cross_k", _P),
            ("cross_v", _P),
            ("cross_st", _I * 3),
            ("cross_len", _I),
            ("cross_mask", _P),
            ("cmb", _I),
            ("cms", _I),
            ("rcos", _P),
            ("rsin", _P),
        ]
    )


class _Moe(ctypes.Structure):
    _fields_ = [
        ("router", _Proj),
        ("experts", _P),
        ("n_experts", _I),
        ("top_k", _I),
        ("normalize", _I),
        ("inter", _I),
        ("shared_gate", _Proj),
        ("shared_up", _Proj),
        ("shared_down", _Proj),
        ("shared_router", _Proj),
        ("shared_inter", _I),
    ]


class _NotNative(Exception):
    pass


def native_decoder(model) -> NativeDecoder | None:
    """A NativeDecoder for `model`, or None when the native step does not apply (see the module doc)."""
    lib = library()
    describe = getattr(model, "describe_decoder", None)
    if lib is None or describe is None or _global_hooks():
        return None
    try:
        desc = describe()
    except (AttributeError, NotImplementedError):
        return None
    if desc is None or any(m._forward_hooks or m._forward_pre_hooks for m in desc.modules):
        return None
    try:
        return NativeDecoder(model, lib, desc)
    except _NotNative:
        return None


def _global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


class NativeDecoder:
    """The C structs for one model's description; built per generate call, so weights the user replaced
    since the last call are the ones read."""

    def __init__(self, model, lib, desc: Decoder):
        self.model, self.lib, self.desc = model, lib, desc
        dtype = desc.layers[0].attn_norm.weight.dtype
        if dtype not in _DTYPES or desc.heads % desc.kv_heads or desc.rotary_dim % 2:
            raise _NotNative
        self.dtype, self.code = dtype, _DTYPES[dtype]
        self.keep: list[torch.Tensor] = []  # everything the C side points at
        self.structs: list = []  # the C structs the layers point at (mixtures of experts)
        E, D = desc.hidden, desc.head_dim
        rows = {"q": desc.heads * D, "k": desc.kv_heads * D, "v": desc.kv_heads * D, "o": E}
        rows |= {"gate": desc.intermediate, "up": desc.intermediate, "down": E}
        cols = {"q": E, "k": E, "v": E, "o": desc.heads * D, "gate": E, "up": E, "down": desc.intermediate}
        self.layers = (_Layer * len(desc.layers))()
        for i, layer in enumerate(desc.layers):
            if layer.activation not in ACTIVATIONS:
                raise _NotNative
            c = self.layers[i]
            groups = [(layer.q, layer.k, layer.v)]
            if layer.moe is None:
                groups.append((layer.up, layer.gate or layer.up))
            if any(len({p.transposed for p in group}) > 1 for group in groups):
                raise _NotNative  # q/k/v, and gate/up, are computed side by side in one layout
            for name in _PROJS:
                p = getattr(layer, name)
                if p is None and name != "gate" and not (layer.moe is not None and name in ("up", "down")):
                    raise _NotNative
                setattr(c, name, self._proj(p, rows[name], cols[name]))
            if layer.moe is not None:
                c.moe = self._moe(layer.moe, E)
            for name in _NORMS:
                width = D if name in ("q_norm", "k_norm") else E
                setattr(c, name, self._norm(getattr(layer, name), width))
            c.act, c.scaling = ACTIVATIONS[layer.activation], layer.scaling
            if layer.cross_q is not None:
                if layer.cross_norm is None or layer.cross_o is None or layer.cross_q.transposed:
                    raise _NotNative
                c.cross_norm = self._norm(layer.cross_norm, E)
                c.cross_q = self._proj(layer.cross_q, desc.heads * D, E)
                c.cross_o = self._proj(layer.cross_o, E, desc.heads * D)
                c.cross_scaling = layer.cross_scaling
        self.crossed = any(layer.cross_q is not None for layer in desc.layers)
        self.cross_bound: tuple | None = None  # which encoder keys/values (and mask) `layers` points at
        self.shape = _Shape(E, desc.heads, desc.kv_heads, D, desc.intermediate, desc.rotary_dim)
        self.types = [layer.attention_type for layer in desc.layers]
        self.bound: tuple | None = None  # which cache buffers `layers` points at

    def _tensor(self, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if t.device.type != "cpu" or t.dtype not in _DTYPES or tuple(t.shape) != shape:
            raise _NotNative
        if t.dim() == 2 and t.stride(1) != 1 or t.dim() == 1 and not t.is_contiguous():
            raise _NotNative
        t = t.detach()
        self.keep.append(t)
        return t

    def _proj(self, p: Projection | None, rows: int, cols: int) -> _Proj:
        if p is None:
            return _Proj()
        w = self._tensor(p.weight, (cols, rows) if p.transposed else (rows, cols))
        b = None if p.bias is None else self._tensor(p.bias, (rows,))
        return _Proj(
            w.data_ptr(),
            None if b is None else b.data_ptr(),
            _DTYPES[w.dtype],
            0 if b is None else _DTYPES[b.dtype],
            w.stride(0) * w.element_size(),
            int(p.transposed),
        )

    def _moe(self, m: Moe, hidden: int) -> int:
        """The C description of a sparse MLP; returns its address (kept alive with the decoder)."""
        n = len(m.experts)
        if n == 0 or not 0 < m.top_k <= n:
            raise _NotNative
        inter = m.experts[0][0].weight.shape[0]
        experts = (_Proj * (3 * n))()
        for e, (gate, up, down) in enumerate(m.experts):
            if any(p.transposed or p.bias is not None for p in (gate, up, down)):
                raise _NotNative
            experts[3 * e] = self._proj(gate, inter, hidden)
            experts[3 * e + 1] = self._proj(up, inter, hidden)
            experts[3 * e + 2] = self._proj(down, hidden, inter)
        c = _Moe(
            router=self._proj(m.router, n, hidden),
            experts=ctypes.addressof(experts),
            n_experts=n,
            top_k=m.top_k,
            normalize=int(m.normalize),
            inter=inter,
        )
        if m.shared is not None:
            gate, up, down = m.shared
            shared = gate.weight.shape[0]
            if m.shared_gate is None or any(p.transposed or p.bias is not None for p in m.shared):
                raise _NotNative
            c.shared_gate, c.shared_up = self._proj(gate, shared, hidden), self._proj(up, shared, hidden)
            c.shared_down = self._proj(down, hidden, shared)
            c.shared_router, c.shared_inter = self._proj(m.shared_gate, 1, hidden), shared
        self.structs += [experts, c]
        return ctypes.addressof(c)

    def _norm(self, n: Norm | None, width: int) -> _Norm:
        if n is None:
            return _Norm()
        if n.kind not in NORM_KINDS or n.kind is None:
            raise _NotNative
        w = self._tensor(n.weight, (width,))
        b = None if n.bias is None else self._tensor(n.bias, (width,))
        if b is not None and b.dtype != w.dtype:
            raise _NotNative
        return _Norm(
            w.data_ptr(),
            None if b is None else b.data_ptr(),
            _DTYPES[w.dtype],
            NORM_KINDS[n.kind],
            n.eps,
            n.offset,
        )

    def step(
        self, token, position_ids, attention_mask, cache, cache_position=None, cross_kv=None, cross_mask=None
    ) -> torch.Tensor | None:
        """Logits (B, vocab) float32 for one new token per row, as `decode_one_token`; None when this
        call does not fit the native step (the caller then runs the model). With cross-attention layers,
        `cache` is the self-attention cache, `cross_kv` the per-layer encoder keys/values (B, heads,
        S_enc, head_dim) and `cross_mask` the encoder's (B, S_enc) 1/0 mask or None."""
        B = token.shape[0]
        if B > MAX_ROWS or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        desc = self.desc
        if self.crossed and not self._bind_cross(cross_kv, cross_mask, B):
            return None
        reserve = getattr(cache, "reserve", None)
        if reserve is None or len(cache) != len(self.layers):
            return None
        static = getattr(cache, "max_cache_len", None) is not None
        if static:
            if cache_position is None:
                return None
            slot = int(cache_position[0])
            S = cache.max_cache_len
            keys, values = reserve(S)
        else:
            slot = cache.get_seq_length()
            S = slot + 1
            keys, values = reserve(S)
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
        masks = desc.masks(attention_mask, slot, S, cache_position if static else None)
        flat: dict[str, torch.Tensor | None] = {}
        for kind, mask in masks.items():
            if mask is not None:
                if mask.shape[-1] != S or mask.shape[2] != 1 or mask.dtype != torch.bool:
                    return None
                mask = mask[:, 0, 0].expand(B, S)
            flat[kind] = mask
        qscale = 1.0 if desc.query_scale is None else desc.query_scale(slot)
        bias, bb, bh = None, 0, 0
        if desc.position_bias is not None and (bias := desc.position_bias(slot, S)) is not None:
            H = desc.heads
            if bias.dim() != 4 or bias.shape[-2:] != (1, S) or bias.shape[1] not in (1, H):
                return None
            if bias.shape[0] not in (1, B):
                return None
            bias = bias[:, :, 0].float().expand(B, H, S).contiguous()  # (B, H, S)
            bb, bh = bias.stride(0), bias.stride(1)
        for layer, kind in zip(self.layers, self.types):
            layer.qscale = qscale
            layer.bias, layer.bb, layer.bh = None if bias is None else bias.data_ptr(), bb, bh
            mask = flat[kind]
            layer.mask = None if mask is None else mask.data_ptr()
            layer.mb, layer.ms = mask.stride() if mask is not None else (0, 0)
        x = desc.embed(token[:, None])
        if desc.positions is not None:
            x = x + desc.positions(position_ids.reshape(B, 1))
        x = x.to(self.dtype).contiguous()  # (B, 1, E), updated in place by the C side
        cos = sin = None
        if desc.rotary is not None:
            cos, sin = (t.reshape(B, -1).contiguous() for t in desc.rotary(x, position_ids))
        if desc.rotaries is not None:
            tables = {
                kind: tuple(t.reshape(B, -1).contiguous() for t in rotary(x, position_ids))
                for kind, rotary in desc.rotaries.items()
            }
            if any(kind not in tables for kind in self.types):
                return None
            for layer, kind in zip(self.layers, self.types):
                layer.rcos, layer.rsin = (t.data_ptr() for t in tables[kind])
        strides = (_I * 3)(*k0.stride()[:3])
        self.lib.autolm_decode(
            self.code, ctypes.byref(self.shape), self.layers, len(self.layers), x.data_ptr(), B,
            None if cos is None else cos.data_ptr(), None if sin is None else sin.data_ptr(),
            strides, slot, S, torch.get_num_threads(),
        )  # fmt: skip
        cache.advance_to(slot + 1)
        return desc.head(x)[:, -1].float()

    def _bind_cross(self, cross_kv, cross_mask, B: int) -> bool:
        """Point the cross-attention layers at this step's encoder keys/values and mask; False when they
        do not fit (missing, another dtype or shape, a strided head_dim)."""
        if cross_kv is None or len(cross_kv) != len(self.layers):
            return False
        k0 = cross_kv[0][0]
        bound = (id(cross_kv), k0.data_ptr(), cross_kv[-1][1].data_ptr(), id(cross_mask), B)
        if bound == self.cross_bound:
            return True
        shape = (B, self.desc.heads, k0.shape[2], self.desc.head_dim)
        tensors = [t for pair in cross_kv for t in pair]
        if k0.stride(-1) != 1 or k0.device.type != "cpu":
            return False
        if any(
            t.dtype != self.dtype or tuple(t.shape) != shape or t.stride() != k0.stride() for t in tensors
        ):
            return False
        mask = None
        if cross_mask is not None:
            if tuple(cross_mask.shape) != (B, shape[2]):
                return False
            mask = cross_mask.bool().contiguous()  # (B, S_enc)
        for c, (k, v) in zip(self.layers, cross_kv):
            c.cross_k, c.cross_v, c.cross_len = k.data_ptr(), v.data_ptr(), shape[2]
            c.cross_st[0], c.cross_st[1], c.cross_st[2] = k0.stride()[:3]
            c.cross_mask = None if mask is None else mask.data_ptr()
            c.cmb, c.cms = (mask.stride(0), mask.stride(1)) if mask is not None else (0, 0)
        self.cross_kept = (cross_kv, mask)  # what the layers point at stays alive
        self.cross_bound = bound
        return True
