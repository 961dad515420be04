"""from_pretrained, as a pipeline: name -> files -> config -> model class -> weights.

The model is built on the meta device and the mapped checkpoint tensors are assigned into it, cast and
moved once, so the weights are never copied twice. Every parameter ends up either loaded or named in
`missing_keys` (and initialised); nothing is left silently random, nothing is returned half-loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from . import kernels
from .configuration import GENERATION_CONFIG_NAME, GenerationConfig, PretrainedConfig, read_json
from .errors import AutolmValueError, CheckpointError
from .hub import open_repo, pop_hub_kwargs
from .modeling_utils import PreTrainedModel
from .weights import StateDict, checkpoint_files, load_checkpoint, release_pages

logger = logging.getLogger("autolm")

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}
_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Arguments of load_pretrained itself (the rest of **kwargs override config attributes).
LOADER_KWARGS = (
    "state_dict",
    "dtype",
    "torch_dtype",
    "device_map",
    "output_loading_info",
    "ignore_mismatched_sizes",
    "strict",
    "gguf_file",
    "from_tf",
    "attn_implementation",
    "low_cpu_mem_usage",
    "trust_remote_code",
)
# Checkpoint keys some old exports carry that no model needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_pretrained(
    cls,
    pretrained_model_name_or_path: str | os.PathLike | None,
    *model_args,
    config: PretrainedConfig | str | os.PathLike | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    device_map: str | int | torch.device | dict | None = None,
    output_loading_info: bool = False,
    ignore_mismatched_sizes: bool = False,
    strict: bool = False,
    gguf_file: str | None = None,
    from_tf: bool = False,
    attn_implementation: str | None = None,
    low_cpu_mem_usage: bool = True,
    **kwargs,
):
    """Load a pretrained model of class `cls`.

    Args:
        pretrained_model_name_or_path: a model directory, a hub id, or a `.gguf` file.
        config: a config object (used as is) or a path to load one from; kwargs override its attributes.
        state_dict: tensors to load instead of the checkpoint files.
        dtype / torch_dtype: "auto" (default: the config's dtype), a torch dtype, or its name.
        device_map: None / "cpu", "auto", a device string, index or `torch.device`.
        output_loading_info: also return {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}.
        ignore_mismatched_sizes: initialise weights whose shape differs instead of raising.
        strict: raise instead of initialising missing weights.
        from_tf: read TensorFlow weights (tf_model.h5, needs h5py) instead of safetensors / .bin.

    Raises:
        ConfigError, CheckpointError, UnsupportedModelError, MissingFilesError, ValueError.
    """
    hub_kwargs = pop_hub_kwargs(kwargs)
    kwargs.pop(
        "trust_remote_code", None
    )  # consent is the Auto classes' business; a concrete class has no code
    path = Path(str(pretrained_model_name_or_path or ""))
    if gguf_file is None and path.suffix == ".gguf" and path.is_file():
        pretrained_model_name_or_path, gguf_file = path.parent, path.name
    repo = open_repo(pretrained_model_name_or_path, **hub_kwargs) if pretrained_model_name_or_path else None

    config, unused = _load_config(cls, config, pretrained_model_name_or_path, gguf_file, hub_kwargs, kwargs)
    if unused:
        logger.warning(
            "from_pretrained ignored arguments that are not config attributes: %s", ", ".join(unused)
        )
    if attn_implementation is not None:
        if attn_implementation not in _ATTN_IMPLEMENTATIONS:
            logger.warning("attn_implementation=%r is not available here; using sdpa.", attn_implementation)
            attn_implementation = "sdpa"
        config._attn_implementation = attn_implementation

    target_dtype = dtype if dtype is not None else torch_dtype
    if state_dict is None and gguf_file is not None:
        state_dict = _load_gguf(repo.get(gguf_file), resolve_dtype(target_dtype, config, None))
    elif state_dict is None:
        if repo is None:
            raise AutolmValueError("Pass a model name or path, or state_dict= together with config=.")
        state_dict = load_checkpoint(checkpoint_files(repo, from_tf=from_tf))
    device = resolve_device(device_map)
    target_dtype = resolve_dtype(target_dtype, config, state_dict, device)

    if device.type == "cpu":
        kernels.build_in_background()  # compiles while the weights load, when this version is not built

    with _empty_weights(cls), _skip_init():
        model = cls(config, *model_args)
    if isinstance(model, PreTrainedModel):
        files = getattr(state_dict, "files", None)
        state_dict = model.sanitize(state_dict)  # the family's checkpoint names and layouts -> its own
        if files is not None and not hasattr(state_dict, "files"):
            state_dict = StateDict(state_dict, files=files)
    info = assign_weights(model, state_dict, target_dtype, device, ignore_mismatched_sizes, strict)
    del state_dict
    if not isinstance(model, PreTrainedModel):
        model.to(device)  # buffers another library's class computed in __init__

    config.dtype = target_dtype  # a torch.dtype, as transformers 5 (config.json gets its name)
    config.name_or_path = str(pretrained_model_name_or_path or "")
    model.name_or_path = config.name_or_path
    if repo is not None and repo.exists(GENERATION_CONFIG_NAME):
        model.generation_config = GenerationConfig(**read_json(repo.get(GENERATION_CONFIG_NAME)))
    model.eval()
    return (model, info) if output_loading_info else model


def _empty_weights(cls):
    """autolm's classes are built wholly on meta (their buffers are filled by `_init_buffers`). Another
    library's class (remote code built on transformers) computes buffers such as RoPE tables in __init__;
    only its parameters go to meta, and the buffers stay real."""
    if issubclass(cls, PreTrainedModel):
        return torch.device("meta")
    return _parameters_on_meta()


@contextlib.contextmanager
def _parameters_on_meta():
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _load_gguf(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file, dequantized to `dtype`, with a per-tensor progress bar (off when
    stderr is not a terminal, or after `autolm.hub.disable_progress_bars()`)."""
    from tqdm.auto import tqdm

    from .gguf import iter_gguf_tensors, read_gguf
    from .hub.progress import bars_disabled

    gguf = read_gguf(path)
    state = StateDict(files=[path])
    with tqdm(
        total=len(gguf.tensors),
        desc=f"Loading {path.name}",
        unit="tensor",
        leave=False,
        disable=bars_disabled(),
    ) as bar:
        for name, tensor in iter_gguf_tensors(gguf, dtype):
            state[name] = tensor
            bar.update()
    return state


@contextlib.contextmanager
def _skip_init():
    """Module constructors initialise their weights; on meta tensors that is wasted work (and the first
    init call on meta imports torch._dynamo, ~1.5 s). Every weight is assigned or initialised afterwards."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _load_config(cls, config, name, gguf_file, hub_kwargs, kwargs) -> tuple[PretrainedConfig, dict]:
    if config is not None and not isinstance(config, (PretrainedConfig, str, os.PathLike)):
        # another library's config (remote code built on transformers): used as given
        unused = {k: v for k, v in kwargs.items() if not hasattr(config, k)}
        for key in kwargs.keys() - unused.keys():
            setattr(config, key, kwargs[key])
        return config, unused
    if isinstance(config, PretrainedConfig):
        config = type(config).from_dict(
            config.to_dict() | {"_attn_implementation": config._attn_implementation}
        )
        return config, config.update_known(kwargs)
    source = config if config is not None else name
    config_class = cls.config_class
    if config_class is None:
        from .auto import AutoConfig

        config_class = AutoConfig
    return config_class.from_pretrained(
        source, return_unused_kwargs=True, gguf_file=gguf_file, **hub_kwargs, **kwargs
    )


def resolve_dtype(dtype, config: PretrainedConfig, state_dict: dict | None, device=None) -> torch.dtype:
    """The dtype to load in: "auto"/None read the config's dtype (else the checkpoint's, else float32); a
    family whose config carries its own rule (Qwen-1's bf16/fp16/fp32 flags: `flag_dtype`) follows it."""
    if (dtype is None or dtype == "auto") and hasattr(config, "flag_dtype"):
        return config.flag_dtype(device)
    if dtype is None or dtype == "auto":
        name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if name is not None:
            return resolve_dtype(name, config, None)
        for t in (state_dict or {}).values():
            if t.is_floating_point():
                return t.dtype
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.removeprefix("torch.")]
    raise AutolmValueError(
        f"Unknown dtype {dtype!r}. Use 'auto', a torch dtype, or one of: {', '.join(_DTYPE_NAMES)}."
    )


def resolve_device(device_map) -> torch.device:
    """autolm puts a model on one device; device_map names it."""
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise AutolmValueError(
                f"device_map spreads the model over {sorted(map(str, devices))}; autolm places a model on one "
                "device. Pass device_map='cuda:0', 'cpu' or 'auto'."
            )
        device_map = devices.pop()
    if device_map is None:
        return torch.device("cpu")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError):
        raise AutolmValueError(
            f"device_map={device_map!r} is not a device; pass 'cpu', 'cuda', 'cuda:1' or 'auto'."
        ) from None


def _match_prefix(
    model: nn.Module, expected: set[str], state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Let a base-model checkpoint load into a model with a head, and the other way round."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix == ".":
        return state
    want, have = any(k.startswith(prefix) for k in expected), any(k.startswith(prefix) for k in state)
    if want and not have:
        return {(prefix + k if prefix + k in expected else k): v for k, v in state.items()}
    if have and not want:
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
    return state


def assign_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    ignore_mismatched_sizes: bool = False,
    strict: bool = False,
) -> dict[str, list]:
    """Put checkpoint tensors into a meta-built model; initialise and report what the checkpoint lacks."""
    tied = model.tied_keys() if hasattr(model, "tied_keys") else _aliases(model)
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update((n, b) for n, b in model.named_buffers() if _is_persistent(model, n))
    expected = set(targets) - tied
    files = [str(f) for f in getattr(state, "files", [])]  # a StateDict from load_checkpoint knows them
    state = _match_prefix(model, expected, state)
    if expected and not expected & set(state):
        source = ", ".join(files) if files else "the state_dict passed"
        raise CheckpointError(
            f"{source} provide(s) none of the {len(expected)} weights {type(model).__name__} needs (e.g. "
            f"{sorted(expected)[0]}; found {len(state)} tensors{', e.g. ' + sorted(state)[0] if state else ''}). "
            "The model would be all random: pass the checkpoint of this architecture.",
            files=files or None,
            missing_keys=sorted(expected),
        )

    mismatched = [(k, tuple(state[k].shape), tuple(targets[k].shape)) for k in expected & set(state)]
    mismatched = [m for m in mismatched if m[1] != m[2]]
    if mismatched and not ignore_mismatched_sizes:
        lines = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched)
        where = f"{', '.join(files)}: " if files else ""
        raise CheckpointError(
            f"{where}tensor shapes differ from the config: {lines}. Check config.json matches the weights, or pass "
            "ignore_mismatched_sizes=True to initialise those weights instead.",
            files=files or None,
        )
    mismatched_keys = {k for k, _, _ in mismatched}
    missing = sorted(expected - set(state) | mismatched_keys)
    unexpected = sorted(k for k in set(state) - expected - tied if not k.endswith(_IGNORED_SUFFIXES))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"strict=True and the checkpoint does not match the model: missing {missing}, unexpected {unexpected}."
        )

    for name in sorted(expected):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if name in state and name not in mismatched_keys:
            source = state[name]
            tensor = source.to(device=device, dtype=dtype if source.is_floating_point() else source.dtype)
            if tensor.data_ptr() != source.data_ptr():
                release_pages(source)  # cast or moved: the checkpoint's pages are not needed any more
        else:
            tensor = _initialised_like(model, module, attr, targets[name], dtype, device)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
        else:
            module._buffers[attr] = tensor
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for module in model.modules():
        if hasattr(module, "_init_buffers"):
            module._init_buffers(device)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise CheckpointError(f"Internal error: weights left unloaded after assignment: {still_meta}.")

    if missing:
        logger.warning(
            "Some weights of %s were not in the checkpoint and are newly initialised: %s. "
            "Train the model before using it, or check that the checkpoint matches the class.",
            type(model).__name__,
            ", ".join(missing),
        )
    if unexpected:
        logger.info("Checkpoint weights not used by %s: %s", type(model).__name__, ", ".join(unexpected))
    return {
        "missing_keys": missing,
        "unexpected_keys": unexpected,
        "mismatched_keys": [(k, a, b) for k, a, b in mismatched],
        "error_msgs": [],
    }


def _aliases(model: nn.Module) -> set[str]:
    """Weights that are the same tensor as another (tied in __init__), or declared tied, in another
    library's model: {target} of transformers' `all_tied_weights_keys`, plus any repeated parameter."""
    declared = set(getattr(model, "all_tied_weights_keys", None) or ())
    seen: set[int] = set()
    repeated = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            repeated.add(name)
        seen.add(id(param))
    return declared | repeated


def _is_persistent(model: nn.Module, name: str) -> bool:
    module_name, _, attr = name.rpartition(".")
    return attr not in model.get_submodule(module_name)._non_persistent_buffers_set


def _initialised_like(model, module: nn.Module, attr: str, like: torch.Tensor, dtype, device) -> torch.Tensor:
    """A fresh tensor for a weight the checkpoint lacks, initialised as transformers would."""
    tensor = torch.empty(like.shape, dtype=dtype if like.is_floating_point() else like.dtype, device=device)
    std = getattr(getattr(model, "config", None), "initializer_range", 0.02)
    with torch.no_grad():
        if attr == "bias" or not tensor.is_floating_point():
            tensor.zero_()
        elif hasattr(module, "variance_epsilon") or isinstance(module, nn.LayerNorm):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, std)
    return tensor
