"""Configs: `PretrainedConfig` (config.json) and `GenerationConfig` (generation_config.json).

A config is a bag of attributes with typed defaults per family. It is lossless: every key of the file,
known or not, survives load -> save -> load.
"""

from __future__ import annotations

import copy
import json
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
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
            "Fix the file or re-download the model."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


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

            config_dict = config_from_gguf(repo.get(gguf_file))
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
        config_dict.pop("_source_file", None)
        config = cls(**config_dict)
        unused = config.update_known(kwargs)
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        return cls(**read_json(Path(path)))

    def update_known(self, kwargs: dict) -> dict:
        """Set the kwargs that are config attributes; return the others."""
        unused = {}
        for key, value in kwargs.items():
            if hasattr(self, key) and not key.startswith("__"):
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


# transformers 5 spells it with a capital C; both names work.
PreTrainedConfig = PretrainedConfig


class GenerationConfig:
    """Defaults for `generate`, read from generation_config.json. Unknown keys are kept."""

    defaults: dict[str, Any] = {
        "max_length": 20,
        "max_new_tokens": None,
        "min_length": 0,
        "min_new_tokens": None,
        "do_sample": False,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
        "min_p": None,
        "repetition_penalty": 1.0,
        "num_return_sequences": 1,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "use_cache": True,
        "stop_strings": None,
    }

    def __init__(self, **kwargs: Any):
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
            raise ConfigError(f"{repo.name} has no {GENERATION_CONFIG_NAME}.")
        config = cls(**read_json(path))
        config.update(**kwargs)
        return config

    @classmethod
    def from_model_config(cls, config: PretrainedConfig) -> GenerationConfig:
        keys = ("bos_token_id", "eos_token_id", "pad_token_id")
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
