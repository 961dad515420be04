"""Checkpoint files: find them in a repo, map them without copies, save them in transformers' layout.

safetensors files are memory-mapped (copy-on-write) and sliced into tensors, so loading costs no copy;
`.bin` files go through `torch.load(weights_only=True, mmap=True)` and never unpickle arbitrary objects.
TensorFlow's `tf_model.h5` is read (with `from_tf=True`) by `weights_tf`, into PyTorch names and layouts.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import secrets
import struct
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import AutolmValueError, CheckpointError
from .fileio import Staging, sync_folder, temp_path

if TYPE_CHECKING:
    from .hub import Repo

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# what `checkpoint_files` looks for, in its order of preference
ENTRIES = (SAFE_WEIGHTS, SAFE_INDEX, BIN_WEIGHTS, BIN_INDEX)
TF_WEIGHTS = "tf_model.h5"
TF_INDEX = "tf_model.h5.index.json"
# files named when a load finds no weights of the format it looks for
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".gguf", ".ckpt", ".pt", ".pth")
# shard names save_state_dict writes: transformers' own, or with a suffix when those are taken
SHARD_NAME = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}(-[0-9a-f]{8})?\.(safetensors|bin)")

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


# A safetensors header is JSON of a few hundred bytes per tensor; more than this is not a real checkpoint.
MAX_HEADER_BYTES = 100 * 2**20


class StateDict(dict):
    """The tensors of a checkpoint, remembering the files they came from (for error messages)."""

    files: list[Path]

    def __init__(self, *args, files: list[Path] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.files = list(files or [])


def checkpoint_files(repo: Repo, from_tf: bool = False) -> list[Path]:
    """The weight files of one format (safetensors preferred; TensorFlow's with `from_tf`), every shard
    checked present before any load."""
    formats = ((TF_WEIGHTS, TF_INDEX),) if from_tf else ((SAFE_WEIGHTS, SAFE_INDEX), (BIN_WEIGHTS, BIN_INDEX))
    for single, index in formats:
        if repo.exists(single):
            return [repo.get(single)]
        if repo.exists(index):
            index_path = repo.get(index)
            shards = _index_shards(index_path)
            missing = [s for s in shards if not repo.exists(s)]
            if missing:
                raise CheckpointError(
                    f"{index_path} names shard(s) that are not in {repo.name}: {', '.join(missing)}. "
                    "Re-download the model; the checkpoint is incomplete.",
                    files=[index_path],
                    missing_keys=missing,
                )
            return repo.fetch(shards)
    if from_tf:
        found = [f for f in repo.list_files() if f.endswith(_WEIGHT_SUFFIXES)]
        raise CheckpointError(
            f"from_tf=True, but {repo.name} has no {TF_WEIGHTS} or {TF_INDEX}; its weight files: "
            f"{', '.join(found) if found else 'none'}. Drop from_tf=True to load PyTorch weights.",
            repo_id=repo.name,
        )
    if repo.exists(TF_WEIGHTS) or repo.exists(TF_INDEX):
        raise CheckpointError(
            f"{repo.name} has only TensorFlow weights ({TF_WEIGHTS if repo.exists(TF_WEIGHTS) else TF_INDEX}). "
            "Pass from_tf=True to load them (reading them needs h5py: pip install 'autolm[tf]').",
            repo_id=repo.name,
        )
    raise CheckpointError(
        f"No weights found in {repo.name}: looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, {BIN_WEIGHTS} and {BIN_INDEX}. "
        "Pass the directory of a complete checkpoint, or gguf_file= for a GGUF file.",
        repo_id=repo.name,
    )


def _index_shards(index_path: Path) -> list[str]:
    """The shard file names of a weight index, each a plain name inside the model folder."""

    def fail(problem: str, key: str | None = None) -> CheckpointError:
        return CheckpointError(
            f"{index_path} is not a valid weight index: {problem}. Re-download it.",
            files=[index_path],
            key=key,
        )

    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise fail("it is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise fail(f"it is not JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(index, dict):
        raise fail(f"it holds a {type(index).__name__}, not a JSON object")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise fail("'weight_map' is missing or not an object of tensor name -> shard file", "weight_map")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise fail(f"weight_map[{name!r}] is {shard!r}, not a file name", f"weight_map.{name}")
        # a shard is a file of this model: an absolute path or a `..` would read files outside its folder
        if len(shard) > 255:
            raise fail(
                f"weight_map[{name!r}] is a file name of {len(shard)} characters", f"weight_map.{name}"
            )
        parts = shard.replace("\\", "/").split("/")
        if shard.startswith(("/", "\\")) or ".." in parts or ":" in shard or "\0" in shard:
            raise CheckpointError(
                f"{index_path} names the shard {shard!r} for {name!r}, which is not a file inside the model "
                "folder (absolute paths and '..' are refused). The index is corrupt or hostile; do not use it.",
                files=[index_path],
                key=f"weight_map.{name}",
            )
    return sorted(set(weight_map.values()))


def load_checkpoint(paths: list[Path]) -> StateDict:
    """All tensors of the given files, memory-mapped. Nothing is read until a tensor is used.

    Raises:
        CheckpointError: a file is corrupt, or the files hold no tensor at all.
    """
    state = StateDict(files=paths)
    for path in paths:
        if path.suffix == ".h5":
            from .weights_tf import read_h5

            state.update(read_h5(path))
        else:
            state.update(map_safetensors(path) if path.suffix == ".safetensors" else load_bin(path))
    if not state:
        names = ", ".join(str(p) for p in paths)
        raise CheckpointError(
            f"{names} hold(s) no tensors: the checkpoint is empty, so the model would have only random weights. "
            "Re-download or re-save the model.",
            files=paths,
        )
    return state


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file as views of one copy-on-write mapping of the file."""

    def fail(problem: str, key: str | None = None) -> CheckpointError:
        return CheckpointError(
            f"{path} is not a valid safetensors file: {problem}. Re-download or re-save it.",
            files=[path],
            key=key,
        )

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise fail(f"it is truncated ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
            raise fail(
                f"it declares a header of {header_len} bytes in a file of {size} (truncated or corrupt)"
            )
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (ValueError, RecursionError):
            raise fail("the JSON header is corrupt") from None
    if not isinstance(header, dict):
        raise fail(f"the header is a {type(header).__name__}, not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise fail("__metadata__ is not an object", "__metadata__")
    data_start = 8 + header_len
    if not header:
        return {}
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise fail(f"tensor {name!r} has the header entry {info!r}, not an object", name)
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
        if dtype is None:
            raise fail(
                f"tensor {name!r} has dtype {info.get('dtype')!r}; known: {', '.join(SAFETENSORS_DTYPES)}",
                name,
            )
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**53 for d in shape):
            raise fail(f"tensor {name!r} has the shape {shape!r}, not a list of integers >= 0", name)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < 2**63 for o in offsets)
            or offsets[1] < offsets[0]
        ):
            raise fail(
                f"tensor {name!r} has data_offsets {offsets!r}, not [start, end] with end >= start", name
            )
        start, end = data_start + offsets[0], data_start + offsets[1]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if end - start != math.prod(shape) * itemsize or end > size:
            raise fail(
                f"tensor {name!r} claims bytes {start}..{end} for shape {shape} {info['dtype']}, but the file has "
                f"{size} bytes (truncated or corrupt)",
                name,
            )
        entries.append((start, end, name, dtype, shape))
    reach, last = data_start, None  # the furthest byte a tensor so far covers, and that tensor
    for start, end, name, *_ in sorted(entries):
        if end == start:
            continue
        if start < reach:
            raise fail(f"tensors {last!r} and {name!r} overlap in the file", name)
        reach, last = end, name
    with open(path, "rb") as f:
        # private (copy-on-write): writing into a loaded weight never touches the file
        mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    data = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps `mapping` alive as long as any tensor
    _MAPPINGS.append((data.data_ptr(), data.data_ptr() + size, weakref.ref(mapping)))
    tensors = {}
    for start, end, name, dtype, shape in entries:
        t = data[start:end]
        if start % t.new_empty(0, dtype=dtype).element_size():
            t = t.clone()  # unaligned in the file: one copy of this tensor is the price
        tensors[name] = t.view(dtype).view(shape)
    return tensors


# (start address, end address, mapping) of the checkpoint files mapped so far; dead entries are pruned.
_MAPPINGS: list[tuple[int, int, weakref.ref]] = []


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of `tensor` when it views a mapped checkpoint and a copy has replaced it.

    The pages are clean copies of the file, so this only returns memory: touching them again reads the
    file back. Tensors that are not in a checkpoint mapping are left alone.
    """
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    _MAPPINGS[:] = [m for m in _MAPPINGS if m[2]() is not None]
    for lo, hi, ref in _MAPPINGS:
        mapping = ref()
        if mapping is not None and lo <= start and end <= hi:
            first = -(-(start - lo) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
            last = (end - lo) // mmap.PAGESIZE * mmap.PAGESIZE
            if last > first:
                mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
            return


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch .bin checkpoint, with `weights_only=True` (no arbitrary unpickling) and mmap when possible."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:
        raise CheckpointError(
            f"Could not load {path} safely ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "It is corrupt, truncated, or holds objects other than tensors (which autolm never unpickles). "
            "Re-download it, or convert it to safetensors.",
            files=[path],
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors.", files=[path])
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path} holds {type(value).__name__} under the key {name!r}, where a checkpoint holds only "
                "tensors. The file is not a model checkpoint (or not only one); re-save the model's state_dict.",
                files=[path],
                key=str(name),
            )
    return state


# --- saving -------------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """'5GB' -> 5 * 10**9, '500MiB' -> 500 * 2**20, ints pass through."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", size.upper())
    if not m:
        raise AutolmValueError(
            f"max_shard_size {size!r} is not a size like '5GB', '500MB' or an int of bytes."
        )
    number, unit, binary = float(m.group(1)), m.group(2), m.group(3)
    power = " KMGT".index(unit) if unit else 0
    return int(number * (1024 if binary else 1000) ** power)


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    directory: Path,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
    extra_files: dict[str, str] | None = None,
) -> list[Path]:
    """Write the tensors as one file or shards plus an index, named as transformers names them.

    Order: every new file is written under a temp name and synced; new shards are renamed in (fresh names
    when an old file has the standard one); then the switch, renames only: the single file or index, the
    old files `checkpoint_files` would prefer moved away, `extra_files` ({"config.json": text}, so config
    and weights change together); stale files are deleted last. Readers see the old or the new model.
    """
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor.detach().contiguous()
        shard_bytes += nbytes

    single, index_name = (SAFE_WEIGHTS, SAFE_INDEX) if safe_serialization else (BIN_WEIGHTS, BIN_INDEX)
    stem, ext = single.rsplit(".", 1)
    if len(shards) == 1:
        names = [single]
    else:
        names = [f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}" for i in range(1, len(shards) + 1)]
        if any((directory / n).exists() for n in names):
            # the old checkpoint uses these names: replacing its shards one by one would mix the two
            suffix = secrets.token_hex(4)
            names = [f"{n.rsplit('.', 1)[0]}-{suffix}.{ext}" for n in names]
    entry = names[0] if len(shards) == 1 else index_name

    with Staging() as staging:
        for name, shard in zip(names, shards):
            tmp = staging.temp(directory / name)
            if safe_serialization:
                save_file(shard, str(tmp), metadata={"format": "pt"})
            else:
                torch.save(shard, tmp)
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in state_dict.values())
            weight_map = {k: n for n, shard in zip(names, shards) for k in shard}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            with open(staging.temp(directory / index_name), "w", encoding="utf-8") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        extra = [directory / n for n in extra_files or {}]
        for path, text in zip(extra, (extra_files or {}).values()):
            with open(staging.temp(path), "w", encoding="utf-8") as f:
                f.write(text)

        staging.sync()
        if len(shards) > 1:
            staging.commit(*(directory / n for n in names))  # no index names them yet: invisible
        # The switch, renames only. `checkpoint_files` picks the first of ENTRIES present: those before
        # ours go, least preferred first, so it always picks a complete checkpoint. They are renamed
        # away (unlinking a big file can take a while) and deleted after the switch.
        staging.rename(directory / entry)
        gone = []
        for old in reversed(ENTRIES[: ENTRIES.index(entry)]):
            if (directory / old).exists():
                gone.append(temp_path(directory / old))
                os.replace(directory / old, gone[-1])
        for path in extra:
            staging.rename(path)
        sync_folder(directory)
    for path in gone:
        path.unlink()

    for old in ENTRIES:
        if old != entry:
            (directory / old).unlink(missing_ok=True)  # indexes before the shards they name
    for old in directory.iterdir():
        if SHARD_NAME.fullmatch(old.name) and old.name not in names:
            old.unlink(missing_ok=True)
    return [directory / n for n in names]
