"""Configs: `PretrainedConfig` (config.json) and `GenerationConfig` (generation_config.json).

A config is a bag of attributes with typed defaults per family. It is lossless: every key of the file,
known or not, survives load -> save -> load.
"""

from __future__ import annotations

import contextvars
import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fileio import atomic_write_text

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"

# Keys that belong to the process, not the file.
_RUNTIME_KEYS = {"name_or_path", "_name_or_path", "_attn_implementation", "_commit_hash"}


def read_json(path: Path) -> dict:
    """Read a JSON object from `path`, with an error that names the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e}). Re-download or re-save the file.") from None
    except OSError as e:
        raise ConfigError(f"Could not read {path}: {e.strerror or e}.", files=[path]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
            "Fix the file or re-download the model.",
            files=[path],
        ) from None
    except (ValueError, RecursionError) as e:  # an integer of 10**5 digits, or arrays nested 10**5 deep
        raise ConfigError(
            f"{path} is JSON autolm will not read ({type(e).__name__}: {str(e)[:200]}). "
            "Fix the file or re-download the model.",
            files=[path],
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}.", files=[path])
    return data


# --- checking config values -------------------------------------------------------------------
#
# Values are checked when a config is built, before a family's __post_init__ divides by them and long
# before the model allocates anything: a config.json that asks for 10**9 layers or a head_dim of 10**9
# fails here with the file and the key, not later as a hang, an out-of-memory or a torch error.

# The source file of the config being built (set by from_dict); names the file in errors.
_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("autolm_config_source", default=None)

_DIM_MAX = 2**20
# key -> (smallest, largest) for positive integer sizes
_INT_RANGES: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, 10**4),
    "hidden_size": (1, _DIM_MAX),
    "num_attention_heads": (1, 2**14),
    "num_key_value_heads": (1, 2**14),
    "head_dim": (1, 2**16),
    "intermediate_size": (1, _DIM_MAX),
    "vocab_size": (1, 2**24),
    "max_position_embeddings": (1, 2**28),
    "sliding_window": (1, 2**28),
    "max_window_layers": (0, 10**4),
    "num_labels": (1, 10**5),
}
# key -> (smallest, largest, whether the smallest itself is allowed) for finite floats
_FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "rms_norm_eps": (0.0, 1.0, False),
    "layer_norm_eps": (0.0, 1.0, False),
    "rope_theta": (0.0, 1e12, False),
    "initializer_range": (0.0, 1e3, True),
    "attention_dropout": (0.0, 1.0, True),
    "partial_rotary_factor": (0.0, 1.0, False),
}
_BOOL_KEYS = (
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "use_sliding_window",
    "use_cache",
    "is_encoder_decoder",
    "output_hidden_states",
    "output_attentions",
)
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# keys a family's model reads without a None check: null may not replace their defaults
_REQUIRED = {*_INT_RANGES, *_FLOAT_RANGES, *_BOOL_KEYS, "hidden_act"} - {
    "num_key_value_heads",
    "head_dim",
    "sliding_window",
    "max_window_layers",
    "num_labels",
}
_LAYER_TYPES = ("full_attention", "sliding_attention")
# rope_type -> the keys its frequencies are computed from
_ROPE_NEEDS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor",),
}
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "float", "half", "double")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Checker:
    """Checks one config's values; each failure is a ConfigError naming the file and the key."""

    def __init__(self, values: dict[str, Any], source: str | None):
        self.values = values
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> None:
        where = self.source or "the config"
        raise ConfigError(
            f"{where}: {key} {problem}. {fix}",
            files=[self.source] if self.source else None,
            key=key,
        )

    def int_in(self, key: str, value: Any, low: int, high: int) -> None:
        if not _is_int(value):
            self.fail(
                key, f"is {_short(value)} ({type(value).__name__}), not an integer", "Write a whole number."
            )
        if not low <= value <= high:
            self.fail(
                key,
                f"is {value}, outside the range autolm accepts ({low} to {high})",
                "Fix the value: the file is corrupt, or not meant for this model.",
            )

    def float_in(self, key: str, value: Any, low: float, high: float, low_ok: bool) -> None:
        if not _is_number(value):
            self.fail(key, f"is {_short(value)} ({type(value).__name__}), not a number", "Write a number.")
        if not math.isfinite(value):
            self.fail(key, f"is {value}", "NaN and Infinity are not usable values; write a finite number.")
        if value > high or value < low or (value == low and not low_ok):
            bound = ">=" if low_ok else ">"
            self.fail(key, f"is {value}, outside {bound} {low} and <= {high}", "Fix the value.")

    def check(self) -> None:
        v = self.values
        for key, (low, high) in _INT_RANGES.items():
            # transformers' Qwen2-MoE writes sliding_window 0 for a window that is switched off
            off = key == "sliding_window" and v.get(key) == 0 and v.get("use_sliding_window") is False
            if v.get(key) is not None and not off:
                self.int_in(key, v[key], low, high)
        for key, (low, high, low_ok) in _FLOAT_RANGES.items():
            if v.get(key) is not None:
                self.float_in(key, v[key], low, high, low_ok)
        for key in _BOOL_KEYS:
            if key in v and not isinstance(v[key], bool):
                self.fail(key, f"is {_short(v[key])}, not true or false", "Write true or false.")
        for key in _TOKEN_ID_KEYS:
            self.token_ids(key, v.get(key))
        pad, vocab = v.get("pad_token_id"), v.get("vocab_size")
        if _is_int(pad) and _is_int(vocab) and pad >= vocab:
            self.fail(
                "pad_token_id", f"is {pad}, not below vocab_size ({vocab})", "Fix pad_token_id or vocab_size."
            )
        for key in ("model_type", "hidden_act"):
            if v.get(key) is not None and not isinstance(v[key], str):
                self.fail(key, f"is {_short(v[key])}, not a string", "Write the name as a string.")
        if v.get("architectures") is not None and not (
            isinstance(v["architectures"], list) and all(isinstance(a, str) for a in v["architectures"])
        ):
            self.fail("architectures", f"is {_short(v['architectures'])}", "Write a list of class names.")
        for key in ("dtype", "torch_dtype"):
            name = v.get(key)
            if name is not None and not (
                (isinstance(name, str) and name.removeprefix("torch.") in (*_DTYPE_NAMES, "auto"))
                or type(name).__module__ == "torch"
            ):
                self.fail(key, f"is {_short(name)}", f"Use one of: {', '.join(_DTYPE_NAMES)}.")
        self.labels()
        self.heads()
        self.layer_types()
        for key in ("rope_scaling", "rope_parameters"):
            if v.get(key) is not None:
                self.rope(key, v[key])

    def token_ids(self, key: str, value: Any) -> None:
        if value is None:
            return
        ids = value if isinstance(value, list) else [value]
        if not ids or not all(_is_int(i) and 0 <= i < 2**31 for i in ids):
            self.fail(
                key,
                f"is {_short(value)}",
                "A token id is an integer >= 0 (or a list of them); write null when the model has none.",
            )

    def labels(self) -> None:
        id2label = self.values.get("id2label")
        if id2label is None:
            return
        if not isinstance(id2label, dict):
            self.fail(
                "id2label", f"is a {type(id2label).__name__}", 'Write an object like {"0": "NEGATIVE"}.'
            )
        if len(id2label) > _INT_RANGES["num_labels"][1]:
            self.fail("id2label", f"has {len(id2label)} labels", "That many labels is not a real classifier.")
        for k in id2label:
            if not (_is_int(k) or (isinstance(k, str) and k.strip().lstrip("-").isdigit() and len(k) < 10)):
                self.fail(
                    "id2label", f"has the key {_short(k)}, not a label index", 'Keys are indices: "0", "1".'
                )
        label2id = self.values.get("label2id")
        if label2id is not None and not isinstance(label2id, dict):
            self.fail("label2id", f"is a {type(label2id).__name__}", 'Write an object like {"NEGATIVE": 0}.')

    def heads(self) -> None:
        v = self.values
        hidden, heads, kv, head_dim = (
            v.get("hidden_size"),
            v.get("num_attention_heads"),
            v.get("num_key_value_heads"),
            v.get("head_dim"),
        )
        if heads is None:
            return
        if head_dim is None and hidden is not None and hidden % heads:
            self.fail(
                "num_attention_heads",
                f"({heads}) does not divide hidden_size ({hidden}) and there is no head_dim",
                "Fix one of them, or give head_dim explicitly.",
            )
        if kv is not None and heads % kv:
            self.fail(
                "num_key_value_heads",
                f"({kv}) does not divide num_attention_heads ({heads})",
                "Each key/value head serves a whole group of query heads; fix one of the two.",
            )
        dim = head_dim if head_dim is not None else (hidden // heads if hidden is not None else None)
        if dim is not None and dim * heads > 4 * _DIM_MAX:
            self.fail(
                "head_dim",
                f"({dim}) times num_attention_heads ({heads}) is {dim * heads} features per token",
                "Fix head_dim or num_attention_heads; no real model is that wide.",
            )

    def layer_types(self) -> None:
        types, layers = self.values.get("layer_types"), self.values.get("num_hidden_layers")
        if types is None:
            return
        if not isinstance(types, list) or not all(t in _LAYER_TYPES for t in types):
            self.fail(
                "layer_types",
                f"is {_short(types)}",
                f"Write a list of {' / '.join(map(repr, _LAYER_TYPES))}.",
            )
        if layers is not None and len(types) != layers:
            self.fail(
                "layer_types",
                f"lists {len(types)} layers but num_hidden_layers is {layers}",
                "Give one entry per layer.",
            )

    def rope(self, key: str, params: Any) -> None:
        if not isinstance(params, dict):
            self.fail(
                key, f"is {_short(params)}", 'Write an object like {"rope_type": "linear", "factor": 2.0}.'
            )
        kind = params.get("rope_type", params.get("type", "default"))
        if not isinstance(kind, str):
            self.fail(f"{key}.rope_type", f"is {_short(kind)}", f"Use one of: {', '.join(_ROPE_NEEDS)}.")
        for name in _ROPE_NEEDS.get(kind, ()):
            if name not in params:
                self.fail(key, f"has rope_type {kind!r} but no {name!r}", f"Add {name!r} to {key}.")
        for name, value in params.items():
            if name in ("rope_type", "type", "truncate", "long_factor", "short_factor", "mrope_section"):
                continue
            if value is not None:
                self.float_in(f"{key}.{name}", value, 0.0, 1e12, name not in ("factor", "rope_theta"))
        if kind == "llama3" and params["high_freq_factor"] == params["low_freq_factor"]:
            self.fail(
                key, "has high_freq_factor equal to low_freq_factor", "llama3 RoPE needs them to differ."
            )
        if kind == "dynamic" or kind == "yarn":
            dim = self.values.get("head_dim") or (
                (self.values.get("hidden_size") or 0) // (self.values.get("num_attention_heads") or 1)
            )
            if dim * params.get("partial_rotary_factor", 1.0) <= 2:
                self.fail(
                    key, f"has rope_type {kind!r} with a rotary dimension of {dim}", "It needs more than 2."
                )


def validate_config(values: dict[str, Any], source: str | None = None) -> None:
    """Check the well-known keys of a config's values (types, ranges, consistency).

    Raises:
        ConfigError: naming `source` (the file) and the key, and what to write instead.
    """
    _Checker(values, source).check()


class PretrainedConfig:
    """Base config. Subclasses set `model_type` and `defaults` (their family's typed defaults)."""

    model_type: str = ""
    defaults: dict[str, Any] = {}

    # defaults every config has, whatever the family
    _common: dict[str, Any] = {
        "architectures": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "tie_word_embeddings": True,
        "output_hidden_states": False,
        "output_attentions": False,
        "use_cache": True,
        "is_encoder_decoder": False,
    }

    def __init__(self, **kwargs: Any):
        for key, value in {**self._common, **self.defaults}.items():
            setattr(self, key, copy.deepcopy(value))
        self.name_or_path = kwargs.pop("name_or_path", kwargs.pop("_name_or_path", ""))
        attn = kwargs.pop("attn_implementation", kwargs.pop("_attn_implementation", None))
        self._attn_implementation = attn or "sdpa"
        if "torch_dtype" in kwargs and "dtype" not in kwargs:
            kwargs["dtype"] = kwargs["torch_dtype"]
        num_labels = kwargs.pop("num_labels", None)
        self._source_file = kwargs.pop("_source_file", None) or _SOURCE.get()
        if type(self).model_type:
            kwargs.pop("model_type", None)  # the class decides (a file's blank or odd value must not win)
        for key, value in kwargs.items():
            if value is None and getattr(self, key, None) is not None and key in _REQUIRED:
                # null in the file would replace the family's default with nothing
                _Checker({}, self._source_file).fail(
                    key,
                    "is null",
                    f"Write a value (this family's default is {getattr(self, key)!r}) or drop the key.",
                )
        validate_config({**vars(self), **kwargs, "num_labels": num_labels}, self._source_file)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self._set_labels(num_labels)
        self.__post_init__()

    def __post_init__(self) -> None:
        """Family hook: derive attributes (head_dim, num_key_value_heads, ...) from the others."""

    def _set_labels(self, num_labels: int | None) -> None:
        id2label = getattr(self, "id2label", None)
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                num_labels_dict = {i: f"LABEL_{i}" for i in range(num_labels)}
                self.id2label = num_labels_dict
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        self._set_labels(n)

    @property
    def torch_dtype(self):
        return getattr(self, "dtype", None)

    @property
    def use_return_dict(self) -> bool:
        return bool(self.__dict__.get("return_dict", True))

    def return_dict_for(self, return_dict: bool | None) -> bool:
        """A forward's `return_dict` argument, or the config's when it is None (transformers' rule)."""
        return self.use_return_dict if return_dict is None else bool(return_dict)

    # --- per-layer attention ----------------------------------------------------------------------

    # The window size of "sliding_attention" layers (None: no window). Families set it from their keys.
    attention_window: int | None = None

    @property
    def layer_types(self) -> list[str]:
        """ "full_attention" / "sliding_attention" per layer: config.json's own list when it has one, else
        derived from the family's legacy keys (`_derived_layer_types`), as transformers derives it."""
        explicit = self.__dict__.get("_layer_types")
        if explicit is not None and self._reads_layer_types:
            return explicit
        return self._derived_layer_types()

    @layer_types.setter
    def layer_types(self, value: list[str] | None) -> None:
        self.__dict__["_layer_types"] = None if value is None else list(value)

    # False for families whose transformers code ignores a `layer_types` key (kept in the file all the same)
    _reads_layer_types = True

    def _derived_layer_types(self) -> list[str]:
        return ["full_attention"] * int(getattr(self, "num_hidden_layers", 0) or 0)

    @torch_dtype.setter
    def torch_dtype(self, value) -> None:
        self.dtype = value

    # --- loading --------------------------------------------------------------------------------

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> tuple[dict, dict]:
        """Read config.json (or a GGUF's metadata). Returns (config dict, the kwargs not used)."""
        gguf_file = kwargs.pop("gguf_file", None)
        path = Path(str(pretrained_model_name_or_path))
        if gguf_file is None and path.suffix == ".gguf" and path.is_file():
            pretrained_model_name_or_path, gguf_file = path.parent, path.name
        from .hub import open_repo, pop_hub_kwargs  # here, not at the top: a model module needs no hub code

        repo = open_repo(pretrained_model_name_or_path, **pop_hub_kwargs(kwargs))
        if gguf_file is not None:
            from .gguf import config_from_gguf

            gguf_path = repo.get(gguf_file)
            config_dict = config_from_gguf(gguf_path)
            config_dict["_source_file"] = str(gguf_path)
        else:
            config_file = repo.get_optional(CONFIG_NAME)
            if config_file is None:
                raise ConfigError(
                    f"{repo.name} has no {CONFIG_NAME} (found: {', '.join(repo.list_files()[:20]) or 'nothing'}). "
                    "Point at the directory that holds the model's config.json, or pass gguf_file= for a GGUF."
                )
            config_dict = read_json(config_file)
            config_dict["_source_file"] = str(config_file)
        config_dict.setdefault("_name_or_path", str(pretrained_model_name_or_path))
        return config_dict, kwargs

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, return_unused_kwargs: bool = False, **kwargs
    ):
        """Load config.json from a directory (or hub id); kwargs that name config attributes override them."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        return cls.from_dict(config_dict, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs):
        config_dict = dict(config_dict)
        token = _SOURCE.set(config_dict.pop("_source_file", None))
        try:
            config = cls(**config_dict)
        finally:
            _SOURCE.reset(token)
        unused = config.update_known(kwargs)
        if len(unused) < len(kwargs):
            validate_config({**vars(config), "num_labels": None}, "the keyword arguments")
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        return cls(**read_json(Path(path)), _source_file=str(path))

    def update_known(self, kwargs: dict) -> dict:
        """Set the kwargs that are config attributes; return the others."""
        unused = {}
        for key, value in kwargs.items():
            # rope_parameters: transformers 5's spelling, honoured over a classic file's rope_theta/rope_scaling
            if (hasattr(self, key) or key == "rope_parameters") and not key.startswith("__"):
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    def update(self, config_dict: dict) -> None:
        for key, value in config_dict.items():
            setattr(self, key, value)

    # --- saving ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in _RUNTIME_KEYS or key.startswith("_"):
                continue
            if key == "dtype" and value is not None and not isinstance(value, str):
                value = str(value).removeprefix("torch.")
            out[key] = copy.deepcopy(value)
        if out.get("dtype") is not None:
            out["torch_dtype"] = out["dtype"]  # transformers 4 reads this spelling, 5 the other
        if self.__dict__.get("_layer_types") is not None:
            out["layer_types"] = list(self.__dict__["_layer_types"])
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["model_type"] = self.model_type or out.get("model_type", "")
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        directory = Path(save_directory)
        if directory.is_file():
            raise ConfigError(f"{directory} is a file; save_pretrained needs a directory path.")
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / CONFIG_NAME)
        from .remote_code import save_code

        save_code(self, directory, CONFIG_NAME)  # a class from a repo's code: its files come along

    # --- helpers --------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def get_text_config(self, decoder: bool = False) -> PretrainedConfig:
        return self


# generation setting -> (smallest, largest) for integers
_GEN_INTS: dict[str, tuple[int, int]] = {
    "max_length": (1, 2**31 - 1),
    "max_new_tokens": (1, 2**31 - 1),
    "min_length": (0, 2**31 - 1),
    "min_new_tokens": (0, 2**31 - 1),
    "top_k": (0, 2**31 - 1),
    "num_return_sequences": (1, 2**10),
    "num_beams": (1, 2**10),
    "no_repeat_ngram_size": (0, 2**10),
}
# generation setting -> (smallest, largest, whether the smallest itself is allowed) for floats
_GEN_FLOATS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 1e6, True),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, True),
    "typical_p": (0.0, 1.0, True),
    "repetition_penalty": (0.0, 1e6, False),
    "length_penalty": (-1e6, 1e6, True),
}
_GEN_BOOLS = ("do_sample", "use_cache", "output_scores", "return_dict_in_generate", "renormalize_logits")


def validate_generation_config(values: dict[str, Any], source: str | None = None) -> None:
    """Check the settings generate() reads from generation_config.json.

    Raises:
        ConfigError: naming `source` (the file) and the key, and what to write instead.
    """
    check = _Checker(values, source)
    for key, (low, high) in _GEN_INTS.items():
        if values.get(key) is not None:
            check.int_in(key, values[key], low, high)
    for key, (low, high, low_ok) in _GEN_FLOATS.items():
        if values.get(key) is not None:
            check.float_in(key, values[key], low, high, low_ok)
    for key in _GEN_BOOLS:
        if values.get(key) is not None and not isinstance(values[key], bool):
            check.fail(key, f"is {_short(values[key])}, not true or false", "Write true or false.")
    for key in (*_TOKEN_ID_KEYS, "decoder_start_token_id"):
        check.token_ids(key, values.get(key))
    stop = values.get("stop_strings")
    if stop is not None and not (
        (isinstance(stop, str) and stop)
        or (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 1024)
    ):
        check.fail("stop_strings", f"is {_short(stop)}", "Write a non-empty string or a list of them.")
    for key in ("cache_implementation",):
        if values.get(key) is not None and not isinstance(values[key], str):
            check.fail(key, f"is {_short(values[key])}, not a string", "Write a name such as 'static'.")


# transformers 5 spells it with a capital C; both names work.
PreTrainedConfig = PretrainedConfig


class GenerationConfig:
    """Defaults for `generate`, read from generation_config.json. Unknown keys are kept."""

    # As transformers 5: every setting is None until a file, the user or generate() sets it, so generate()
    # can tell "max_length was left alone" (20 NEW tokens) from "max_length=20" (20 in all).
    defaults: dict[str, Any] = dict.fromkeys(
        (
            "max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "max_time",
            "stop_strings", "do_sample", "num_beams", "num_beam_groups", "use_cache", "cache_implementation",
            "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
            "diversity_penalty", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
            "bad_words_ids", "renormalize_logits", "suppress_tokens", "begin_suppress_tokens",
            "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores",
            "output_logits", "return_dict_in_generate", "pad_token_id", "bos_token_id", "eos_token_id",
            "decoder_start_token_id",
        )
    )  # fmt: skip
    # What generate() uses for a setting still None (transformers' _get_default_generation_params).
    global_defaults: dict[str, Any] = {
        "max_length": 20,
        "min_length": 0,
        "do_sample": False,
        "use_cache": True,
        "early_stopping": False,
        "num_beams": 1,
        "num_beam_groups": 1,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
        "typical_p": 1.0,
        "epsilon_cutoff": 0.0,
        "eta_cutoff": 0.0,
        "diversity_penalty": 0.0,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "num_return_sequences": 1,
        "output_scores": False,
        "output_logits": False,
        "return_dict_in_generate": False,
    }

    def __init__(self, **kwargs: Any):
        validate_generation_config(kwargs, kwargs.pop("_source_file", None) or "the generation settings")
        for key, value in self.defaults.items():
            setattr(self, key, value)
        for key, value in kwargs.items():
            setattr(self, key, value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> GenerationConfig:
        from .hub import open_repo, pop_hub_kwargs  # here, not at the top: a model module needs no hub code

        repo = open_repo(pretrained_model_name_or_path, **pop_hub_kwargs(kwargs))
        path = repo.get_optional(GENERATION_CONFIG_NAME)
        if path is None:
            raise ConfigError(f"{repo.name} has no {GENERATION_CONFIG_NAME}.", repo_id=repo.name)
        config = cls.from_json_file(path)
        config.update(**kwargs)
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GenerationConfig:
        """Read generation_config.json; its values are checked here, not at the first generate()."""
        return cls(**read_json(Path(path)), _source_file=str(path))

    @classmethod
    def from_model_config(cls, config: PretrainedConfig) -> GenerationConfig:
        keys = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
        return cls(**{k: getattr(config, k) for k in keys if getattr(config, k, None) is not None})

    def update(self, **kwargs: Any) -> dict:
        """Set known attributes; return the kwargs that are not generation settings."""
        unused = {}
        for key, value in kwargs.items():
            if hasattr(self, key):
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}

    def to_diff_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.defaults or self.defaults[k] != v}

    def to_json_string(self) -> str:
        return json.dumps(self.to_diff_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / GENERATION_CONFIG_NAME, self.to_json_string())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_json_string()}"
