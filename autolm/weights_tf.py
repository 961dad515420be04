"""TensorFlow checkpoints: the tf_model.h5 files transformers' TF classes saved, read as PyTorch tensors.

A Keras weights file lists its layers in the root attribute `layer_names`; each layer's group lists the
TF variable names of its weights in `weight_names` (`tfgpt2lm_head_model/transformer/h_._0/ln_1/gamma:0`),
and holds each array at that path. A shard of a sharded save (`tf_model-00001-of-00002.h5`) lists the
variables themselves in `layer_names`, already without the model's scope. Every name becomes the one
transformers' PyTorch classes use (`transformer.h.0.ln_1.weight`) by the generic rules below, the rules
transformers' TF -> PyTorch conversion followed, so the family modules load them like any checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, MissingDependencyError

# The last part of a TF variable name -> its PyTorch name (parts not listed keep theirs, e.g. `weight` of
# TFConv1D, TFSharedEmbeddings and T5's layer norm, or `bias`).
LEAF_NAMES = {
    "kernel": "weight",
    "gamma": "weight",
    "beta": "bias",
    "embeddings": "weight",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# A Keras kernel is (..., in, out), a torch weight (out, in, ...): the permutation for each rank
# (Dense, Conv1D (width, in, out), Conv2D (h, w, in, out)).
KERNEL_PERMUTATIONS = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 0, 1)}
# `_._` joins a list's name and index in TF (`h_._0` is `h.0`); `scope___module` names a TF scope whose
# PyTorch module has another name (`mlm___cls` is `cls`).
LIST_SEPARATOR = "_._"
RENAME_SEPARATOR = "___"


def pytorch_name(tf_name: str, scoped: bool = True) -> str:
    """The PyTorch parameter name of a TF variable name.

    `scoped`: the name starts with the model's own scope (`tf_bert_for_masked_lm/`), which PyTorch
    names do not have (shards of a sharded save were written without it).
    """
    name = tf_name.rsplit(":", 1)[0] if tf_name.rpartition(":")[2].isdigit() else tf_name
    parts = [p for p in name.replace(LIST_SEPARATOR, "/").split("/") if p]
    if scoped and len(parts) > 1:
        parts = parts[1:]
    parts = [p.rpartition(RENAME_SEPARATOR)[2] for p in parts]
    parts[-1] = LEAF_NAMES.get(parts[-1], parts[-1])
    return ".".join(parts)


def to_torch_layout(tf_name: str, array: np.ndarray) -> torch.Tensor:
    """The array of a TF variable in the layout of its PyTorch parameter."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    leaf = tf_name.rsplit(":", 1)[0].rpartition("/")[2]
    if leaf == "kernel" and tensor.ndim in KERNEL_PERMUTATIONS:
        return tensor.permute(KERNEL_PERMUTATIONS[tensor.ndim]).contiguous()
    if leaf in ("bias", "beta") and tensor.ndim > 1 and all(d == 1 for d in tensor.shape[:-1]):
        return tensor.reshape(-1)  # TFConv1D keeps its bias as (1, out)
    return tensor


def read_h5(path: Path) -> dict[str, torch.Tensor]:
    """All weights of a tf_model.h5 file (or one of its shards), keyed by PyTorch names. Weights that keep
    their TF layout are views of a copy-on-write mapping of the file; kernels are transposed copies.

    Raises:
        MissingDependencyError: h5py is not installed.
        CheckpointError: the file is not a Keras weights file, or is truncated.
    """
    h5py = _import_h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(
            f"{path} is not a readable HDF5 file ({e}). It is truncated or corrupt: re-download it.",
            files=[path],
        ) from None
    state: dict[str, torch.Tensor] = {}
    with f:
        try:
            for tf_name, array, scoped in _variables(h5py, f, path):
                name = pytorch_name(tf_name, scoped)
                if (
                    name not in state
                ):  # a shared variable (tied embeddings) is listed under each layer using it
                    state[name] = to_torch_layout(tf_name, array)
        except CheckpointError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
            # what HDF5 raises on damaged metadata (heaps, object headers, undecodable names)
            raise CheckpointError(
                f"{path} is corrupt ({type(e).__name__}: {str(e)[:200]}). Re-download it.", files=[path]
            ) from None
    return state


def _variables(h5py, f, path: Path) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(TF variable name, array, whether the name has the model scope) of every weight in the file."""
    layer_names = _string_list(f, "layer_names")
    if layer_names is None:
        raise CheckpointError(
            f"{path} has no 'layer_names' attribute, so it is not a weights file saved by Keras / "
            "transformers' TF classes. Pass the folder of a TF model saved with save_pretrained.",
            files=[path],
        )
    for layer in layer_names:
        item = _get(f, layer, path)
        if isinstance(item, h5py.Dataset):  # a shard: one dataset per variable
            yield layer, _array(item, path), False
            continue
        for weight in _string_list(item, "weight_names") or []:
            dataset = _get(item, weight, path)
            if not isinstance(dataset, h5py.Dataset):
                raise CheckpointError(
                    f"{path} lists the weight {weight!r}, which is a group, not an array: the file is corrupt. "
                    "Re-download it.",
                    files=[path],
                    key=weight,
                )
            yield weight, _array(dataset, path), True


def _array(dataset, path: Path) -> np.ndarray:
    """The dataset's array, mapped from the file (copy-on-write, nothing read yet) when it is stored as
    Keras stores it: contiguous (so unfiltered), native numbers. Anything else is read."""
    offset = dataset.id.get_offset()
    plain = dataset.chunks is None and dataset.dtype.isnative and dataset.dtype.kind in "biuf"
    if offset is None or not plain or dataset.ndim == 0 or dataset.size == 0:
        return dataset[()]
    if offset + dataset.nbytes > path.stat().st_size:
        raise CheckpointError(
            f"{path} is truncated: the weight {dataset.name!r} lies past its end. Re-download it.",
            files=[path],
            key=dataset.name,
        )
    return np.memmap(path, mode="c", dtype=dataset.dtype, offset=offset, shape=dataset.shape)


def _get(group, name: str, path: Path):
    item = group.get(name)
    if item is None:
        raise CheckpointError(
            f"{path} lists the weight {name!r} but does not hold it: the file is truncated or corrupt. "
            "Re-download it.",
            files=[path],
            key=name,
        )
    # HDF5 can link to other files and keep a dataset's bytes in any file; a weights file has no reason to
    outside = item.file.filename != group.file.filename or (
        hasattr(item, "external") and (item.external is not None or item.is_virtual)
    )
    if outside:
        raise CheckpointError(
            f"{path} takes the weight {name!r} from another file (an HDF5 external link, external or virtual "
            "dataset). A saved TF model never does: the file is corrupt or hostile; do not use it.",
            files=[path],
            key=name,
        )
    return item


def _string_list(obj, name: str) -> list[str] | None:
    """A list-of-strings attribute; Keras splits one over 64 KiB into `name0`, `name1`, ..."""
    if name in obj.attrs:
        values = list(obj.attrs[name])
    elif f"{name}0" in obj.attrs:
        values, i = [], 0
        while f"{name}{i}" in obj.attrs:
            values.extend(obj.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError(
            "Reading TensorFlow weights (tf_model.h5) needs h5py: pip install h5py "
            "(or pip install 'autolm[tf]'). TensorFlow itself is not needed."
        ) from None
    return h5py
