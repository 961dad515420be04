"""`PreTrainedModel`, the base of every model class, and `ModelOutput`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configuration import CONFIG_NAME, GENERATION_CONFIG_NAME, GenerationConfig, PretrainedConfig
from .errors import AutolmTypeError


class ModelOutput(dict):
    """A dict of outputs read as attributes (`out.logits`), keys (`out["logits"]`) or positions (`out[0]`).

    Entries that are None are left out of keys and positions, as in transformers.
    """

    def __init__(self, **kwargs: Any):
        super().__init__({k: v for k, v in kwargs.items() if v is not None})
        self.__dict__["_fields"] = tuple(kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in self.__dict__.get("_fields", ()):
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r}; it has {', '.join(self)}")

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


class PreTrainedModel(nn.Module):
    """Base class: holds `config`, loads and saves weights in transformers' formats.

    Subclasses set `config_class` and `base_model_prefix` and build their modules in `__init__(config)`.
    A user class may subclass it directly, e.g. a backbone from `AutoModel.from_config(config)` plus a head.
    """

    config_class: type[PretrainedConfig] | None = None
    base_model_prefix: str = "model"
    # weights that are the same tensor as another when config.tie_word_embeddings: {tied: source}
    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: PretrainedConfig, *args, **kwargs):
        super().__init__()
        if not isinstance(config, PretrainedConfig):
            raise AutolmTypeError(
                f"{type(self).__name__} needs a PretrainedConfig, got {type(config).__name__}. "
                f"Build one with AutoConfig.from_pretrained(...) or {self.config_class.__name__ if self.config_class else 'a config class'}(...)."
            )
        self.config = config
        self.name_or_path = getattr(config, "name_or_path", "")
        self.generation_config: GenerationConfig | None = GenerationConfig.from_model_config(config)

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs):
        """Load weights into this class. See `autolm.loader.load_pretrained` for the arguments."""
        from .loader import load_pretrained

        return load_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_config(cls, config: PretrainedConfig, dtype: torch.dtype | str | None = None, **kwargs):
        """A randomly initialised model of this class."""
        from .loader import resolve_dtype

        config.update_known({k: v for k, v in kwargs.items() if k not in ("torch_dtype",)})
        dtype = resolve_dtype(dtype if dtype is not None else kwargs.get("torch_dtype"), config, None)
        previous = torch.get_default_dtype()
        if dtype is not None and dtype.is_floating_point:
            torch.set_default_dtype(dtype)
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        model.init_weights()
        return model.eval()

    @classmethod
    def _from_config(cls, config: PretrainedConfig, **kwargs):
        return cls.from_config(config, **kwargs)

    def init_weights(self) -> None:
        """Initialise every parameter (normal(0, initializer_range) for linears and embeddings), then tie."""
        for module in self.modules():
            self._init_module(module)
        self.tie_weights()

    def _init_module(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif hasattr(module, "variance_epsilon") and hasattr(module, "weight"):
                module.weight.fill_(1.0)

    def sanitize(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Family hook: turn a checkpoint's names and layouts into this model's (fused qkv split, stacked
        experts, Conv1D transposed, TF names...), so the loader stays generic. Default: as it is."""
        return state_dict

    def post_init(self) -> None:
        """Called by some subclasses at the end of __init__ (transformers' habit); nothing to do here."""

    # --- properties ---------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        seen: set[int] = set()
        total = 0
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        for p in self.parameters():
            if id(p) in seen or (only_trainable and not p.requires_grad):
                continue
            if exclude_embeddings and id(p) in embeddings:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def get_input_embeddings(self) -> nn.Module:
        base = self.base_model
        if base is not self:
            return base.get_input_embeddings()
        raise NotImplementedError(f"{type(self).__name__} does not define get_input_embeddings().")

    def get_output_embeddings(self) -> nn.Module | None:
        return None

    def tie_weights(self) -> None:
        """Make the output embeddings the same tensor as the input embeddings when the config says so."""
        if not getattr(self.config, "tie_word_embeddings", False):
            return
        output = self.get_output_embeddings()
        if output is not None:
            output.weight = self.get_input_embeddings().weight

    def tied_keys(self) -> set[str]:
        """State-dict keys that alias another weight in this model (and are not saved)."""
        if not getattr(self.config, "tie_word_embeddings", False):
            return set()
        return set(self._tied_weights_keys)

    # --- saving ---------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        **kwargs,
    ) -> None:
        """Write config.json, generation_config.json and the weights (sharded above `max_shard_size`).

        Saving over an existing model is safe to interrupt: the directory holds the old model or the new
        one, the configs switched together with the weights (see `weights.save_state_dict`).
        """
        from .remote_code import save_code
        from .weights import save_state_dict

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        configs = {CONFIG_NAME: self.config.to_json_string()}
        if self.generation_config is not None:
            configs[GENERATION_CONFIG_NAME] = self.generation_config.to_json_string()
        if state_dict is None:
            tied = self.tied_keys()
            state_dict = {k: v for k, v in self.state_dict().items() if k not in tied}
        save_state_dict(
            state_dict,
            directory,
            max_shard_size=max_shard_size,
            safe_serialization=safe_serialization,
            extra_files=configs,
        )
        # a class from a repo's code (config or model): its files come along, auto_map points at them
        save_code(self.config, directory, CONFIG_NAME)
        save_code(self, directory, CONFIG_NAME)

    def generate(self, *args, **kwargs):
        from .generation import generate

        return generate(self, *args, **kwargs)

    def prepare_for_decoding(self, compiled: bool = False) -> None:
        """Lay the weights out for fast CPU decoding now (generate does it after its first token): same
        Parameters, same values; see `autolm.generation.layout`."""
        from .generation.layout import prepare_for_decoding

        prepare_for_decoding(self, compiled=compiled)
