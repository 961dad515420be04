"""The Auto classes: pick the config and model class from `model_type` (or `architectures`)."""

from __future__ import annotations

import os

from . import models, remote_code
from .configuration import PretrainedConfig
from .errors import AutolmOSError, AutolmValueError, ConfigError, UnsupportedModelError

# Classes users registered, kept apart from the built-in registry so they can never replace it.
_USER_CONFIGS: dict[str, type[PretrainedConfig]] = {}


def _model_type_of(config_dict: dict) -> str:
    model_type = config_dict.get("model_type")
    if not model_type:
        for arch in config_dict.get("architectures") or []:
            if arch in models.architectures():
                return models.architectures()[arch]
        source = config_dict.get("_source_file", "the config")
        raise UnsupportedModelError(
            f"{source} has no model_type, and its architectures {config_dict.get('architectures')} are not "
            f'ones autolm knows. Add "model_type" (one of: {", ".join(_supported())}) to config.json.'
        )
    return model_type


def _supported() -> list[str]:
    return sorted(set(models.supported_model_types()) | set(_USER_CONFIGS))


def _is_native(model_type: str | None) -> bool:
    return bool(model_type) and (
        models.canonical_model_type(model_type) is not None or model_type in _USER_CONFIGS
    )


def _remote_class(
    name, reference: str, remote: dict, hub_kwargs: dict, auto_class: str, approved=None
) -> type:
    return remote_code.get_class(
        name,
        reference,
        remote.get("trust_remote_code"),
        lock_file=remote.get("lock_file"),
        hub_kwargs=hub_kwargs,
        code_revision=remote.get("code_revision"),
        approved=approved,
        auto_class=auto_class,
    )


def config_class_for(model_type: str, source: str = "the config") -> type[PretrainedConfig]:
    if model_type in _USER_CONFIGS:
        return _USER_CONFIGS[model_type]
    if models.canonical_model_type(model_type) is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} (from {source}) is not supported. Supported types: "
            f"{', '.join(_supported())}. Register your own classes with AutoConfig.register / "
            "AutoModel.register, or load a repo that ships its code with trust_remote_code=True."
        )
    return models.get_class(model_type, "config")


class AutoConfig:
    """`AutoConfig.from_pretrained(path, **overrides)` -> the family's config class."""

    def __init__(self):
        raise AutolmOSError(
            "AutoConfig is built with AutoConfig.from_pretrained(...) or AutoConfig.for_model(...)."
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> PretrainedConfig:
        """Read config.json and build its class: autolm's for the `model_type`, or the repo's own code
        (auto_map) with `trust_remote_code` (True, a pin, or a lock file entry; see `autolm.remote_code`)."""
        from .hub import pop_hub_kwargs

        return_unused = kwargs.pop("return_unused_kwargs", False)
        remote = remote_code.pop_remote_kwargs(kwargs)
        hub_kwargs = pop_hub_kwargs(kwargs)
        config_dict, kwargs = PretrainedConfig.get_config_dict(
            pretrained_model_name_or_path, **hub_kwargs, **kwargs
        )
        model_type = config_dict.get("model_type")
        if model_type is not None and not isinstance(model_type, str):
            source = config_dict.get("_source_file", "the config")
            raise ConfigError(
                f'{source}: model_type must be a string such as "llama", found {model_type!r}. Fix config.json.',
                key="model_type",
                files=[source],
            )
        reference = remote_code.remote_reference(
            config_dict.get("auto_map"),
            "AutoConfig",
            native=_is_native(config_dict.get("model_type")),
            prefer_remote_code=remote.get("prefer_remote_code", False),
            trust_remote_code=remote.get("trust_remote_code"),
            source=config_dict.get("_source_file", ""),
        )
        if reference is not None:
            config_class = _remote_class(
                pretrained_model_name_or_path, reference, remote, hub_kwargs, "AutoConfig"
            )
            config_dict.pop("_source_file", None)
        else:
            config_class = config_class_for(
                _model_type_of(config_dict), config_dict.get("_source_file", "config")
            )
        return config_class.from_dict(config_dict, return_unused_kwargs=return_unused, **kwargs)

    @classmethod
    def for_model(cls, model_type: str, **kwargs) -> PretrainedConfig:
        return config_class_for(model_type)(**kwargs)

    @staticmethod
    def register(model_type: str, config: type[PretrainedConfig], exist_ok: bool = False) -> None:
        """Map a new `model_type` to a user config class. A built-in type is never replaced."""
        if models.canonical_model_type(model_type) is not None:
            raise AutolmValueError(
                f"model_type {model_type!r} is built into autolm; register your config under another name."
            )
        if model_type in _USER_CONFIGS and not exist_ok:
            raise AutolmValueError(
                f"model_type {model_type!r} is already registered; pass exist_ok=True to replace it."
            )
        if getattr(config, "model_type", model_type) not in (model_type, ""):
            raise AutolmValueError(
                f"{config.__name__}.model_type is {config.model_type!r}, not {model_type!r}."
            )
        _USER_CONFIGS[model_type] = config


class _AutoModel:
    task: str = "base"
    # per Auto class: user config class -> user model class
    _user_models: dict[type, type]

    def __init__(self):
        raise AutolmOSError(
            f"{type(self).__name__} is built with .from_pretrained(...) or .from_config(config)."
        )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._user_models = {}

    @classmethod
    def model_class_for(cls, config: PretrainedConfig):
        for config_class in type(config).__mro__:
            if config_class in cls._user_models:
                return cls._user_models[config_class]
        model_type = config.model_type or getattr(config, "model_type", "")
        if models.canonical_model_type(model_type) is None:
            source = getattr(config, "_source_file", None) or "the config"
            raise UnsupportedModelError(
                f"{source}: {cls.__name__} has no class for model_type {model_type!r} ({type(config).__name__}). "
                f"Supported types: {', '.join(_supported())}; register one with {cls.__name__}.register(...)."
            )
        return models.get_class(model_type, cls.task)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """Load config and weights and return the matching class (see `autolm.loader.load_pretrained`)."""
        from .hub import pop_hub_kwargs
        from .loader import LOADER_KWARGS, load_pretrained

        config = kwargs.pop("config", None)
        hub_kwargs = pop_hub_kwargs(kwargs)
        remote = remote_code.pop_remote_kwargs(kwargs)
        load_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in LOADER_KWARGS}
        if config is None or isinstance(config, (str, os.PathLike)):
            config, kwargs = AutoConfig.from_pretrained(
                config if config is not None else pretrained_model_name_or_path,
                return_unused_kwargs=True,
                gguf_file=load_kwargs.get("gguf_file"),
                **hub_kwargs,
                **remote,
                **kwargs,
            )
        reference = remote_code.remote_reference(
            getattr(config, "auto_map", None),
            cls.__name__,
            native=isinstance(config, PretrainedConfig) and _is_native(config.model_type),
            prefer_remote_code=remote.get("prefer_remote_code", False),
            trust_remote_code=remote.get("trust_remote_code"),
            source=str(pretrained_model_name_or_path),
        )
        if reference is not None:
            # the config's code passed consent in this load: the same bundle is not asked about twice
            approved = remote_code.origin(type(config))
            model_class = _remote_class(
                pretrained_model_name_or_path, reference, remote, hub_kwargs, cls.__name__, approved
            )
        else:
            model_class = cls.model_class_for(config)
        return load_pretrained(
            model_class,
            pretrained_model_name_or_path,
            *model_args,
            config=config,
            **hub_kwargs,
            **load_kwargs,
            **kwargs,
        )

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs):
        """A randomly initialised model for `config`."""
        return cls.model_class_for(config).from_config(config, **kwargs)

    @classmethod
    def register(
        cls, config_class: type[PretrainedConfig], model_class: type, exist_ok: bool = False
    ) -> None:
        """Map a user config class to a user model class. Built-in config classes cannot be re-mapped."""
        if config_class.__module__.startswith("autolm.models"):
            raise AutolmValueError(
                f"{config_class.__name__} is a built-in config; subclass it (with its own model_type) to register."
            )
        if config_class in cls._user_models and not exist_ok:
            raise AutolmValueError(
                f"{config_class.__name__} is already registered with {cls.__name__}; pass exist_ok=True."
            )
        cls._user_models[config_class] = model_class


class AutoModel(_AutoModel):
    task = "base"


class AutoModelForCausalLM(_AutoModel):
    task = "causal_lm"


class AutoModelForSequenceClassification(_AutoModel):
    task = "sequence_classification"


class AutoModelForTokenClassification(_AutoModel):
    task = "token_classification"


class AutoModelForQuestionAnswering(_AutoModel):
    task = "question_answering"


class AutoModelForMaskedLM(_AutoModel):
    task = "masked_lm"


class AutoModelForSeq2SeqLM(_AutoModel):
    task = "seq2seq_lm"


class AutoModelForTextEncoding(_AutoModel):
    task = "text_encoding"
