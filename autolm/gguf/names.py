"""From llama.cpp's names and keys to transformers' ones: one declarative table per family.

A family says which `general.architecture` it reads, the transformers `model_type` and class it
becomes, how GGUF tensor names map to Hugging Face parameter names, and whether llama.cpp's
converter permuted the q/k rows (it does so for "llama" only, to turn the halves-rotary layout of
Hugging Face into the interleaved one ggml computes with).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import torch

from ..errors import GGUFError
from .dequant import FLOAT_TYPES, dequantize
from .reader import GGUFFile, read_gguf

logger = logging.getLogger("autolm")

# GGUF name outside the blocks -> Hugging Face name
_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# GGUF name inside `blk.N.` -> Hugging Face name inside `model.layers.N.`
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Mixture-of-experts layers: the router and each projection of all experts as one 3-D tensor (the family's
# `sanitize` splits those into one matrix per expert)
_EXPERTS = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
# Qwen2-MoE's shared expert and its sigmoid gate
_SHARED_EXPERT = {
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Phi-3: q/k/v fused in one tensor and gate/up in another, in both formats (not permuted)
_PHI3_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}
# Tensors llama.cpp writes that are rotary settings, not parameters: read into the config instead
# (`_rope_from_tensors`): llama 3.1+'s per-frequency factors, Phi-3's longrope factors.
_IGNORED = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


# Gemma 3: a norm before and after attention and the MLP each, q/k norms
_GEMMA3_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
    **_QK_NORMS,
}


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # the transformers class
    top: dict[str, str]
    layer: dict[str, str]
    permute_qk: bool = False
    head_dim: bool = False  # whether the transformers config carries `head_dim`
    extra_config: dict = field(default_factory=dict)
    # MoE families: config defaults for what llama.cpp hard-codes per architecture (None: not MoE)
    moe: dict | None = None
    # `{architecture}.KEY` metadata copied into the config as it is: {KEY: config key}
    keys: dict = field(default_factory=dict)
    # llama.cpp stores (1 + w) for norms the model scales by (1 + w) (Gemma); the loader subtracts 1 in
    # float32, as transformers' GGUF loader does
    norms_plus_one: bool = False


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM", _TOP, _LAYER, permute_qk=True, head_dim=True),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", _TOP, _LAYER),
    "phi3": Family("phi3", "Phi3ForCausalLM", _TOP, _PHI3_LAYER),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", _TOP, _LAYER | _QK_NORMS, head_dim=True),
    # llama.cpp renormalises qwen3moe's top-k weights and not qwen2moe's (unless expert_weights_norm says)
    "qwen3moe": Family(
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        _TOP,
        _LAYER | _QK_NORMS | _EXPERTS,
        head_dim=True,
        moe={"norm_topk_prob": True},
    ),
    "qwen2moe": Family(
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        _TOP,
        _LAYER | _EXPERTS | _SHARED_EXPERT,
        moe={"norm_topk_prob": False},
    ),
    "gemma3": Family(
        "gemma3_text",
        "Gemma3ForCausalLM",
        _TOP,
        _GEMMA3_LAYER,
        head_dim=True,
        extra_config={"hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh"},
        keys={"attention.sliding_window": "sliding_window"},
        norms_plus_one=True,
    ),
}


def family_of(gguf: GGUFFile) -> Family:
    """The family for this file's `general.architecture`; a GGUFError listing the supported ones."""
    architecture = gguf.architecture
    family = FAMILIES.get(architecture)
    if family is None:
        raise GGUFError(
            f"GGUF file {gguf.path} holds a model of architecture {architecture!r}, which autolm cannot "
            f"load from GGUF. Supported architectures: {', '.join(sorted(FAMILIES))}. Use the original "
            "safetensors checkpoint of this model instead."
        )
    return family


def config_from_gguf(path_or_reader: str | PathLike[str] | GGUFFile) -> dict:
    """A transformers-style `config.json` dict rebuilt from a GGUF file's metadata.

    Args:
        path_or_reader: the `.gguf` file, or a `GGUFFile` from `read_gguf`.

    Returns:
        A dict with `model_type`, `architectures`, the shape keys (`hidden_size`, ...),
        `rope_theta` / `rope_parameters`, `tie_word_embeddings`, the special token ids and `dtype`.

    Raises:
        GGUFError: an unsupported architecture, or required metadata missing.
    """
    gguf = read_gguf(path_or_reader)
    family = family_of(gguf)
    arch = gguf.architecture

    def key(name: str, default=None, required: bool = False, kind: type = int):
        # typed: a string where a count belongs fails here, naming the key, not deep in the model
        if required:
            return gguf.require(f"{arch}.{name}", kind)
        return gguf.get(f"{arch}.{name}", default, kind)

    hidden = key("embedding_length", required=True)
    heads = key("attention.head_count", required=True)
    if heads <= 0:
        raise GGUFError(
            f"GGUF file {gguf.path}: {arch}.attention.head_count is {heads}; a model needs at least one head. "
            "The file is corrupt; convert it again.",
            files=[gguf.path],
            key=f"{arch}.attention.head_count",
        )
    config: dict = {
        "model_type": family.model_type,
        "architectures": [family.architecture],
        "vocab_size": _vocab_size(gguf),
        "hidden_size": hidden,
        # an MoE file without dense layers may leave the dense width out
        "intermediate_size": key("feed_forward_length", required=family.moe is None)
        or key("expert_feed_forward_length", required=True),
        "num_hidden_layers": key("block_count", required=True),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "max_position_embeddings": key("context_length", 2048),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6, kind=float),
        "hidden_act": "silu",
    }
    if family.head_dim:
        # llama.cpp writes key_length only when it differs from hidden / heads; rope.dimension_count
        # is the rotary width, which is the head size for these families
        config["head_dim"] = key("attention.key_length") or key("rope.dimension_count") or hidden // heads
    if family.model_type == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
        config["mlp_bias"] = False
    if family.moe is not None:
        config |= _moe_config(gguf, family, key, config["num_hidden_layers"])

    rope_theta = key("rope.freq_base", kind=float)
    if rope_theta is None:
        rope_theta = 10000.0
        logger.info("%s has no %s.rope.freq_base; using rope_theta=%s", gguf.path, arch, rope_theta)
    config["rope_theta"] = rope_theta
    rope_parameters: dict = {"rope_type": "default", "rope_theta": rope_theta}
    scaling = _rope_scaling(gguf, arch)
    if scaling is not None:
        config["rope_scaling"] = scaling
        rope_parameters |= scaling
    config["rope_parameters"] = rope_parameters
    if family.model_type == "llama" and "rope_freqs.weight" in gguf.tensors:
        llama3 = _llama3_from_factors(gguf, rope_theta, config)
        if llama3 is not None:
            config["rope_scaling"] = llama3
            config["rope_parameters"] = rope_parameters | llama3
    if family.model_type == "phi3":
        config |= _phi3_config(gguf, key, config)

    for gguf_key, config_key in family.keys.items():
        if (value := gguf.get(f"{arch}.{gguf_key}")) is not None:
            config[config_key] = value
    # llama.cpp writes the output projection only when it is not the embedding matrix
    config["tie_word_embeddings"] = "output.weight" not in gguf.tensors
    for name, gguf_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
        ("unk_token_id", "unknown_token_id"),
    ):
        value = gguf.get(f"tokenizer.ggml.{gguf_key}", kind=int)
        if value is not None:
            config[name] = value
    dtype = _float_dtype(gguf)
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    return config | family.extra_config


def _moe_config(gguf: GGUFFile, family: Family, key, layers: int) -> dict:
    """Expert counts and widths; layers without a router are dense (`mlp_only_layers`)."""
    config = {
        "num_experts": key("expert_count", required=True),
        "num_experts_per_tok": key("expert_used_count", required=True),
        "moe_intermediate_size": key("expert_feed_forward_length", required=True),
        "norm_topk_prob": key("expert_weights_norm", family.moe["norm_topk_prob"], kind=bool),
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(layers) if f"blk.{i}.ffn_gate_inp.weight" not in gguf.tensors],
    }
    if family.model_type == "qwen2_moe":
        shared = gguf.tensors.get("blk.0.ffn_gate_shexp.weight")
        width = key("expert_shared_feed_forward_length")
        config["shared_expert_intermediate_size"] = width or (
            int(shared.shape[-1]) if shared is not None else None
        )
        config["qkv_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    else:
        config["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    return config


def _factors(gguf: GGUFFile, name: str) -> list[float] | None:
    tensor = gguf.tensors.get(name)
    if tensor is None:
        return None
    return dequantize(tensor.data, tensor.tensor_type, (tensor.n_elements,), torch.float32).tolist()


def _llama3_from_factors(gguf: GGUFFile, theta: float, config: dict) -> dict | None:
    """Llama 3.1+'s rope scaling from the `rope_freqs` tensor llama.cpp writes in its place.

    llama.cpp stores each frequency's divisor: 1 above the high-frequency cut, `factor` below the low
    one, 1 / ((1 - s) / factor + s) between, s linear in the frequency. So factor is the largest value and
    two in-between values fix the line; the pair (low_freq_factor, high_freq_factor) and
    original_max_position_embeddings are known only up to a common scale, which is chosen so that
    low_freq_factor is 1 (Llama 3.1-3.3 and 3.2 all use 1, 4 and 8192). Files whose factors are not
    of this shape are refused, naming the file: loading them with another rotary would be silently wrong.
    """
    rope_factors = _factors(gguf, "rope_freqs.weight")
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if not rope_factors or all(abs(f - 1.0) < 1e-6 for f in rope_factors):
        return None
    inv = (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)))[: len(rope_factors)]
    factors = np.asarray(rope_factors, dtype=np.float64)
    factor = float(factors.max())
    between = (factors > 1 + 1e-6) & (factors < factor - 1e-6 * factor)
    fitted = None
    if between.sum() >= 2 and factor > 1:
        s = (1 / factors[between] - 1 / factor) / (1 - 1 / factor)  # the smoothing weight of each
        slope, intercept = np.polyfit(inv[between], s, 1)
        if slope > 0 and intercept < 0:
            # s = old / (2 pi (high - low)) * inv - low / (high - low); low = 1 fixes the scale
            width = -1 / intercept
            original = round(slope * 2 * math.pi * width)
            fitted = (1.0, 1.0 + width, original)
    candidates = [fitted] if fitted is not None else [(1.0, 4.0, 8192)]
    for low, high, original in candidates:
        scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": round(float(high), 4),
            "original_max_position_embeddings": int(original),
        }
        if np.allclose(_llama3_divisors(inv, scaling), factors, rtol=1e-4, atol=1e-6):
            return scaling
    raise GGUFError(
        f"GGUF file {gguf.path}: its rope_freqs tensor ({len(rope_factors)} factors, largest {factor:g}) does "
        "not follow Llama 3's rope scaling, the only one autolm reads from it. Load the original "
        "safetensors checkpoint instead, or report the file's origin.",
        files=[gguf.path],
        key="rope_freqs.weight",
    )


def _llama3_divisors(inv: np.ndarray, p: dict) -> np.ndarray:
    """What llama.cpp's converter writes in rope_freqs for these llama3 settings."""
    wavelen = 2 * math.pi / inv
    old, low, high, factor = (
        p["original_max_position_embeddings"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        p["factor"],
    )
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))


def _phi3_config(gguf: GGUFFile, key, config: dict) -> dict:
    """Phi-3's rotary width (Phi-4-mini rotates 3/4 of each head), window and longrope factors."""
    out: dict = {}
    dim = config["hidden_size"] // config["num_attention_heads"]
    rotary = key("rope.dimension_count")
    if rotary and rotary != dim:
        out["partial_rotary_factor"] = rotary / dim
    window = key("attention.sliding_window")
    if window:
        out["sliding_window"] = window
    long, short = _factors(gguf, "rope_factors_long.weight"), _factors(gguf, "rope_factors_short.weight")
    if long is not None and short is not None:
        original = key("rope.scaling.original_context_length") or config["max_position_embeddings"]
        rope = {
            "rope_type": "longrope",
            "rope_theta": config["rope_theta"],
            "long_factor": long,
            "short_factor": short,
            "original_max_position_embeddings": original,
        }
        attention_factor = key("rope.scaling.attn_factor", kind=float)
        if attention_factor is not None:
            rope["attention_factor"] = attention_factor
        out |= {"original_max_position_embeddings": original, "rope_scaling": rope, "rope_parameters": rope}
    if "partial_rotary_factor" in out:
        out["rope_parameters"] = {**out.get("rope_parameters", config["rope_parameters"])}
        out["rope_parameters"]["partial_rotary_factor"] = out["partial_rotary_factor"]
    return out


def _vocab_size(gguf: GGUFFile) -> int:
    size = gguf.get(f"{gguf.architecture}.vocab_size", kind=int)
    if size is not None:
        return size
    embedding = gguf.tensors.get("token_embd.weight")
    if embedding is not None:
        return int(embedding.shape[-1])  # GGUF dims are reversed: (hidden, vocab)
    tokens = gguf.get("tokenizer.ggml.tokens", kind=list)
    if tokens is not None:
        return len(tokens)
    raise GGUFError(
        f"Cannot tell the vocabulary size of {gguf.path}: no {gguf.architecture}.vocab_size key, no "
        "token_embd.weight tensor and no tokenizer.ggml.tokens. The file is incomplete; convert it again."
    )


def _rope_scaling(gguf: GGUFFile, arch: str) -> dict | None:
    kind = gguf.get(f"{arch}.rope.scaling.type", kind=str)
    factor = gguf.get(f"{arch}.rope.scaling.factor", kind=float)
    if kind in (None, "none") or factor is None:
        return None
    scaling = {"rope_type": kind, "factor": factor}
    original = gguf.get(f"{arch}.rope.scaling.original_context_length", kind=int)
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling


def _float_dtype(gguf: GGUFFile) -> torch.dtype:
    """The dtype the weights were converted from: the one float type all matrices share, else float32."""
    types = {tensor.tensor_type for tensor in gguf.tensors.values() if len(tensor.shape) >= 2}
    if len(types) == 1 and (only := types.pop()) in FLOAT_TYPES:
        return FLOAT_TYPES[only]
    return torch.float32


def hf_name(family: Family, gguf_name: str) -> str | None:
    """The Hugging Face parameter name for a GGUF tensor name, or None when the table has none."""
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    if stem in family.top:
        return f"{family.top[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in family.layer:
        return f"model.layers.{parts[1]}.{family.layer[parts[2]]}.{suffix}"
    return None


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Source row of each Hugging Face row of a q/k projection that llama.cpp permuted.

    llama.cpp stores each head's rows as (head_dim/2, 2) pairs where Hugging Face has (2, head_dim/2)
    halves; Hugging Face row (head, half, i) is stored row (head, i, half).
    """
    return np.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(0, 2, 1).reshape(-1)


def iter_gguf_tensors(
    path_or_reader: str | PathLike[str] | GGUFFile, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, tensor)` for every weight of a GGUF file, one tensor at a time.

    Quantized tensors are dequantized to `dtype` as they are reached, so peak memory stays near the
    dequantized model; float tensors already in `dtype` are views of the mapped file (no copy).

    Args:
        path_or_reader: the `.gguf` file, or a `GGUFFile` from `read_gguf`.
        dtype: the dtype of every yielded tensor.

    Raises:
        GGUFError: an unsupported architecture or quant type, or a tensor the family table lacks.
    """
    gguf = read_gguf(path_or_reader)
    family = family_of(gguf)
    arch = gguf.architecture
    heads = gguf.require(f"{arch}.attention.head_count", int)
    kv_heads = gguf.get(f"{arch}.attention.head_count_kv", heads, int)
    if not gguf.tensors:
        raise GGUFError(
            f"GGUF file {gguf.path} holds no tensors (its metadata only): there are no weights to load. "
            "Use a GGUF converted with its weights.",
            files=[gguf.path],
        )
    for name, tensor in gguf.tensors.items():
        target = hf_name(family, name)
        if target is None:
            if name in _IGNORED:
                logger.debug("skipping GGUF tensor %s of %s (no Hugging Face counterpart)", name, gguf.path)
                continue
            raise GGUFError(
                f"GGUF file {gguf.path} holds tensor {name!r}, which autolm's {family.model_type} name "
                f"table does not know. The file may be of a variant autolm does not support yet; "
                "please report it with the file's origin."
            )
        shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
        data = tensor.data
        if family.permute_qk and (".attn_q." in name or ".attn_k." in name):
            groups = heads if ".attn_q." in name else kv_heads
            if groups <= 0 or not shape or shape[0] % (2 * groups):
                raise GGUFError(
                    f"GGUF file {gguf.path}: tensor {name!r} has {shape[0] if shape else 0} rows, which do not "
                    f"split into {groups} heads of rotary pairs (attention.head_count / head_count_kv). "
                    "The file is corrupt; convert it again.",
                    files=[gguf.path],
                    key=name,
                )
            # rows hold whole blocks, so the stored (possibly quantized) rows are reordered before unpacking
            data = data[unpermute_rows(shape[0], heads if ".attn_q." in name else kv_heads)]
        if family.norms_plus_one and name.endswith("norm.weight"):
            value = dequantize(
                data, tensor.tensor_type, shape, torch.float32, name=name, where=str(gguf.path)
            )
            value = (value - 1).to(dtype)
        else:
            value = dequantize(data, tensor.tensor_type, shape, dtype, name=name, where=str(gguf.path))
        if tensor.tensor_type not in FLOAT_TYPES:
            tensor.release()  # the dequantized copy is all that is needed now
        yield target, value


__all__ = ["FAMILIES", "Family", "config_from_gguf", "hf_name", "iter_gguf_tensors"]
