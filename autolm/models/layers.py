"""Math shared by the decoder families: Linear, RMSNorm, rotary embeddings (all scaling types), attention,
masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..errors import ConfigError
from ..kernels import linear


class Linear(nn.Linear):
    """nn.Linear whose small-batch CPU products (decoding) run on autolm's native kernels when loaded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the fused kernel computes exactly the same in float32
            return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)
        fast = kernels.norm(x, self.weight, self.variance_epsilon)  # a few rows (decoding), when loaded
        if fast is not None:
            return fast
        # Normalise in float32 and cast back before the weight, as the reference does.
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


ACT2FN = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_pytorch_tanh": None,
    "gelu_new": None,
}


def check_activation(config, key: str = "hidden_act") -> None:
    """Refuse an activation this module has no code for while the config is read, naming its file."""
    name = getattr(config, key, None)
    if name not in ACT2FN:
        source = getattr(config, "_source_file", None) or "the config"
        raise ConfigError(
            f"{source}: {key} {name!r} is not supported; supported: {', '.join(ACT2FN)}. Fix {key} in config.json.",
            key=key,
            files=[source] if source != "the config" else None,
        )


def activation(name: str):
    if name in ("gelu_pytorch_tanh", "gelu_new"):  # gelu_new is the same tanh approximation (GPT-2, T5)
        return lambda x: F.gelu(x, approximate="tanh")
    if name not in ACT2FN:
        raise ConfigError(f"hidden_act {name!r} is not supported; supported: {', '.join(ACT2FN)}.")
    return ACT2FN[name]


# --- rotary position embeddings ---------------------------------------------------------------


def rope_parameters(config) -> dict:
    """One dict with rope_type, rope_theta and the scaling keys, whichever way the config spells them.

    transformers 4 wrote `rope_theta` + `rope_scaling`; transformers 5 writes `rope_parameters`.
    """
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    if params["rope_type"] in ("llama3", "yarn") and "original_max_position_embeddings" not in params:
        params["original_max_position_embeddings"] = config.max_position_embeddings
    return params


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    # built on the CPU explicitly: under the loader's meta-device context this stays a real tensor
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(torch.float) / dim))


def rope_inv_freq(config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin scale for the config's RoPE type (at `seq_len` for "dynamic")."""
    p = rope_parameters(config)
    kind, base = p["rope_type"], float(p["rope_theta"])
    dim = int(config.head_dim * p.get("partial_rotary_factor", 1.0))
    if kind == "default":
        return _default_inv_freq(base, dim), 1.0
    if kind == "linear":
        return _default_inv_freq(base, dim) / p["factor"], 1.0
    if kind == "dynamic":
        max_pos = config.max_position_embeddings
        seq_len = max(seq_len or max_pos, max_pos)
        factor = p["factor"]
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return _default_inv_freq(base, dim), 1.0
    if kind == "llama3":
        inv_freq = _default_inv_freq(base, dim)
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_len = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(config, p, base, dim)
    raise ConfigError(
        f"rope type {kind!r} is not supported; supported: default, linear, dynamic, llama3, yarn. "
        "Check rope_scaling / rope_parameters in config.json."
    )


def _yarn_inv_freq(config, p: dict, base: float, dim: int) -> tuple[torch.Tensor, float]:
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or config.max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").to(torch.float) / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions; "dynamic" recomputes its frequencies past the trained length."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = rope_parameters(config)["rope_type"]
        self._init_buffers(None)

    def _init_buffers(self, device: torch.device | None) -> None:
        inv_freq, self.attention_scaling = rope_inv_freq(self.config)
        self.register_buffer("inv_freq", inv_freq.to(device) if device else inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq
        self.max_seq_len_cached = self.config.max_position_embeddings

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.rope_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.config.max_position_embeddings:
                inv_freq = rope_inv_freq(self.config, seq_len)[0].to(x.device)
        freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        half = sin.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # see apply_rotary
        return cos.to(x.dtype), sin.to(x.dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: (B, T, heads, head_dim); cos, sin: (B, T, head_dim) from `RotaryEmbedding`.

    `sin` comes with its first half negated, so rotate_half(x) * sin is x.roll(half) * sin: one op
    instead of four, the same values bit for bit.
    """
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads
    half = q.shape[-1] // 2
    return q * cos + q.roll(half, -1) * sin, k * cos + k.roll(half, -1) * sin


# --- attention --------------------------------------------------------------------------------


def causal_mask(
    attention_mask: torch.Tensor | None,
    past_len: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
    sliding_window: int | None = None,
    cache_position: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean (B or 1, 1, q_len, kv_len) mask, True where a query may attend; None when plain causal
    attention (`is_causal`) computes the same.

    Queries sit at positions past_len .. past_len + q_len - 1, or at the slots `cache_position` of a
    static cache (kv_len = its length; then the mask is always built, from tensors only, so a compiled
    step never reads a tensor into Python). `attention_mask` is the usual (B, >= kv_len) 1/0 mask over
    the slots seen so far; a static cache's unwritten slots are hidden by the causal rule.
    `sliding_window`: a query sees only the last `sliding_window` slots (itself included).
    """
    if cache_position is None:
        padded = attention_mask is not None and not bool(attention_mask[:, :kv_len].all())
        plain = kv_len == past_len + q_len and (q_len == 1 or past_len == 0)
        if plain and not padded and (sliding_window is None or kv_len <= sliding_window):
            return None  # sdpa's is_causal, or no mask at all for one new token
        q_pos = torch.arange(past_len, past_len + q_len, device=device)[:, None]
    else:
        padded = attention_mask is not None
        q_pos = cache_position.to(device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask = mask & (q_pos - k_pos < sliding_window)
    mask = mask[None, None]  # (1, 1, q, kv)
    if padded:
        keep = attention_mask[:, None, None, :kv_len].bool()
        if keep.shape[-1] < kv_len:  # static cache: slots past the mask are hidden by the causal rule anyway
            keep = F.pad(keep, (0, kv_len - keep.shape[-1]), value=True)
        # A padding query sees nothing: sdpa gives it zeros and eager attention the mean of the values,
        # as transformers' masks do (losses read the logits there when the next token is real).
        mask = mask & keep
    return mask


def attention_masks(
    config,
    attention_mask: torch.Tensor | None,
    past_len: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
    cache_position: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """One mask per attention type the config's layers use (`config.layer_types`), built once per
    forward: {"full_attention": ..., "sliding_attention": ...}; each layer takes its own.

    A ready-made 4D mask (the caller's own) serves every layer as it is.
    """
    types = set(config.layer_types)
    if attention_mask is not None and attention_mask.dim() == 4:
        return dict.fromkeys(
            types, attention_mask.bool() if attention_mask.dtype != torch.bool else attention_mask
        )
    window = config.attention_window
    return {
        kind: causal_mask(
            attention_mask,
            past_len,
            q_len,
            kv_len,
            device,
            window if kind == "sliding_attention" else None,
            cache_position,
        )
        for kind in types
    }


def positions_and_masks(
    config,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache,
    cache_position: torch.Tensor | None,
    B: int,
    T: int,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """A decoder's position ids (B, T) and its mask per attention type for T new tokens, whichever
    cache it runs with (none, dynamic, or static with `cache_position` naming the slots written)."""
    static = cache_position is not None and getattr(cache, "max_cache_len", None) is not None
    if static:
        cache.cache_position = cache_position  # a static cache writes at these slots
        past, kv_len = 0, cache.max_cache_len
        if position_ids is None:
            position_ids = cache_position[None].expand(B, -1)
    else:
        past = cache.get_seq_length() if cache is not None else 0
        if cache_position is not None:
            past = int(cache_position[0])
        kv_len = getattr(cache, "max_cache_len", None) or past + T
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=device).unsqueeze(0)
    masks = attention_masks(
        config, attention_mask, past, T, kv_len, device, cache_position if static else None
    )
    return position_ids, masks


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    implementation: str = "sdpa",
    is_causal: bool = False,
    output_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """q: (B, H, T, D); k, v: (B, KVH, S, D). Returns (B, T, H, D), and with `output_weights` the
    attention probabilities (B, H, T, S) too (always the eager path then, as transformers).

    `mask`: None, a boolean mask (True where a query may attend) or a float bias added to the scores
    (e.g. T5's relative positions), broadcastable to (B, H, T, S). `is_causal`: with no mask, queries
    attend causally (the last T of S positions); without it, a None mask means every key is seen.
    """
    n_rep = q.shape[1] // k.shape[1]
    q_len, kv_len = q.shape[2], k.shape[2]
    causal = is_causal and mask is None and q_len > 1
    if implementation == "eager" or output_weights:
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling
        if causal:
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
        scores = _apply_mask(scores, mask)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v)
        if output_weights:
            return out.transpose(1, 2), probs
    elif q_len == 1 and not causal:
        # One new token (decoding): the native kernel, else two small matmuls per kv head group. sdpa's
        # CPU kernel costs milliseconds per call here, more than the layer's weights take to stream.
        fast = kernels.attend_one(q, k, v, mask, scaling)
        if fast is not None:
            return fast.transpose(1, 2)
        B, H, _, D = q.shape
        dtype = q.dtype
        if dtype != torch.float32 and q.device.type == "cpu":
            # half-precision matmuls have no fast CPU kernel here; sdpa accumulates in float32 too
            q, k, v = q.float(), k.float(), v.float()
        q = q.reshape(B, k.shape[1], n_rep, D)  # (B, kv_heads, heads per kv head, D)
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # (B, kv_heads, n_rep, S)
        if mask is not None and mask.dtype != torch.bool and mask.dim() == 4 and mask.shape[1] > 1:
            mask = mask.reshape(mask.shape[0], k.shape[1], n_rep, -1)  # per-head bias, grouped like q
        scores = _apply_mask(scores, mask)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).reshape(B, H, 1, D).to(dtype)
    else:
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=n_rep > 1
        )
    return out.transpose(1, 2)  # (B, T, H, D)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores + mask.to(scores.dtype)


# --- what the native decode step reads (autolm.kernels.decoder) ------------------------------


def same_code(obj, cls, *methods: str) -> bool:
    """True when `obj` runs `cls`'s own code for every method named (no subclass overrode it)."""
    return all(getattr(type(obj), m, None) is getattr(cls, m) for m in methods)


def rms_norm(norm: RMSNorm):
    from ..kernels.decoder import Norm

    return Norm(weight=norm.weight, eps=norm.variance_epsilon, kind="rms")


def projection(layer: nn.Linear):
    from ..kernels.decoder import Projection

    return Projection(weight=layer.weight, bias=layer.bias)
