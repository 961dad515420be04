"""`PreTrainedModel`, the base of every model class, and `ModelOutput`."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configuration import CONFIG_NAME, GENERATION_CONFIG_NAME, GenerationConfig, PretrainedConfig
from .errors import AutolmTypeError, AutolmValueError


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
        config.dtype = model.dtype
        return model  # in train mode, as nn.Module and transformers leave it (from_pretrained: eval)

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

    def set_output_embeddings(self, value: nn.Module) -> None:
        for name in ("lm_head",):
            if hasattr(self, name):
                setattr(self, name, value)
                return
        raise NotImplementedError(f"{type(self).__name__} has no output embeddings to set.")

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary to `new_num_tokens` rows (rounded up to `pad_to_multiple_of`);
        old rows are kept, new ones drawn as transformers draws them (`mean_resizing`: from a normal
        around the old rows' mean with 1e-9 of their covariance; else normal(0, initializer_range)).
        Tied output embeddings stay tied; config.vocab_size follows. Returns the input embeddings.

        Raises:
            AutolmTypeError: `pad_to_multiple_of` is not an int.
        """
        old = self.get_input_embeddings()
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int):
                raise AutolmTypeError(
                    f"pad_to_multiple_of must be an int, got {pad_to_multiple_of!r}; pass e.g. 64."
                )
            n = old.weight.shape[0] if new_num_tokens is None else new_num_tokens
            new_num_tokens = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None:
            return old
        # the same Parameter objects take the new rows, so an optimizer built before still holds them
        old.weight.data = _resized_rows(self, old.weight, new_num_tokens, mean_resizing)
        old.num_embeddings = new_num_tokens
        if old.padding_idx is not None and old.padding_idx >= new_num_tokens:
            old.padding_idx = None
        head = self.get_output_embeddings()
        if head is not None and head.weight is not old.weight:
            head.weight.data = _resized_rows(self, head.weight, new_num_tokens, mean_resizing)
            head.out_features = new_num_tokens
            if getattr(head, "bias", None) is not None:
                bias = torch.zeros(new_num_tokens, dtype=head.bias.dtype, device=head.bias.device)
                n = min(new_num_tokens, head.bias.shape[0])
                bias[:n] = head.bias.data[:n]
                head.bias = nn.Parameter(bias)
        elif head is not None:
            head.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        self.vocab_size = new_num_tokens
        self.tie_weights()
        return self.get_input_embeddings()

    # --- training --------------------------------------------------------------------------------

    supports_gradient_checkpointing: bool = False
    main_input_name = "input_ids"

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each decoder layer in the backward pass instead of keeping its activations
        (`torch.utils.checkpoint`, non-reentrant unless `gradient_checkpointing_kwargs` say otherwise);
        only in train mode with gradients on. Caching is off while it is on, as in transformers.

        Raises:
            AutolmValueError: the model has no checkpointable layers.
        """
        from torch.utils.checkpoint import checkpoint

        if not self.supports_gradient_checkpointing:
            raise AutolmValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        kwargs = (
            {"use_reentrant": False}
            if gradient_checkpointing_kwargs is None
            else gradient_checkpointing_kwargs
        )
        self._set_gradient_checkpointing(True, functools.partial(checkpoint, **kwargs))
        if kwargs.get("use_reentrant", True):
            # a reentrant checkpoint passes gradients only to inputs that need them
            self.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        if self.supports_gradient_checkpointing:
            self._set_gradient_checkpointing(False, None)

    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    def _set_gradient_checkpointing(self, enable: bool, function) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enable
                module._gradient_checkpointing_func = function

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    is_activation_checkpointing = is_gradient_checkpointing

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad (adapters on a frozen model, reentrant
        checkpointing)."""

        def require_grads(module, inputs, output):
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(require_grads)

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

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
        self.config.dtype = self.dtype  # config.json gets its name
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

    def chat(self, tokenizer, query: str, history: list | None = None, system: str | None = None, **kwargs):
        """`(response, history)` for one turn, as Qwen-7B-Chat's `model.chat`, for any causal LM with a
        chat template or a ChatML chat format (see `autolm.generation.chat.chat`)."""
        from .generation.chat import chat

        return chat(self, tokenizer, query, history, system, **kwargs)

    def chat_stream(
        self, tokenizer, query: str, history: list | None = None, system: str | None = None, **kwargs
    ):
        """The reply so far after each new token, as Qwen-7B-Chat's `model.chat_stream`."""
        from .generation.chat import chat_stream

        return chat_stream(self, tokenizer, query, history, system, **kwargs)

    def compute_transition_scores(self, sequences, scores, beam_indices=None, normalize_logits: bool = False):
        """Per-token scores of generated sequences, as transformers' (see `autolm.generation.transitions`)."""
        from .generation import compute_transition_scores

        return compute_transition_scores(self, sequences, scores, beam_indices, normalize_logits)

    def prepare_for_decoding(self, compiled: bool = False) -> None:
        """Lay the weights out for fast CPU decoding now (generate does it after its first token): same
        Parameters, same values; see `autolm.generation.layout`."""
        from .generation.layout import prepare_for_decoding

        prepare_for_decoding(self, compiled=compiled)


def _resized_rows(model: PreTrainedModel, weight: torch.Tensor, n: int, mean_resizing: bool) -> torch.Tensor:
    """`weight`'s first min(n, rows) rows, and new rows below as transformers initialises them."""
    old_n = weight.shape[0]
    new = torch.empty(n, weight.shape[1], dtype=weight.dtype, device=weight.device)
    added = n - old_n
    with torch.no_grad():
        if added > 0 and not mean_resizing:
            # the whole matrix is drawn, then the old rows copied over (transformers' random stream)
            new.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
        keep = min(n, old_n)
        new[:keep] = weight[:keep]
        if added > 0 and mean_resizing:
            old = weight.float()
            mean = old.mean(0)
            centered = old - mean
            covariance = centered.T @ centered / old_n
            from torch.distributions import constraints
            from torch.distributions.multivariate_normal import MultivariateNormal

            if constraints.positive_definite.check(1e-9 * covariance).all():
                rows = MultivariateNormal(mean, covariance_matrix=1e-9 * covariance).sample((added,))
            else:
                rows = mean[None].repeat(added, 1)
            new[old_n:] = rows.to(weight.dtype)
    return new
