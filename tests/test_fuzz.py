"""Malformed files get clean autolm errors: a seeded fuzz run, and the cases that once loaded wrong."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import fuzzing  # noqa: E402

import autolm  # noqa: E402
from autolm.errors import CheckpointError, ConfigError, GGUFError  # noqa: E402

CASES = 330  # 30 of each kind


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    return fuzzing.make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


def test_fuzzed_files_give_clean_errors(seeds, tmp_path):
    began = time.monotonic()
    counts, failures = fuzzing.run_cases(seeds, tmp_path, CASES)
    print(f"\n{CASES} fuzz cases in {time.monotonic() - began:.0f} s\n{fuzzing.summary(counts)}")
    bad = [f for f in failures if f[2] in ("crash", "hang", "oom", "unnamed")]
    assert not bad, "\n\n".join(
        f"{kind} case {seed}: {outcome}\n{detail}" for kind, seed, outcome, detail in bad[:5]
    )


# --- what used to load wrong -------------------------------------------------------------------


def _copy(seeds: Path, folder: str, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(seeds / folder, tmp_path / folder))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_shards_outside_the_folder_are_refused(seeds, tmp_path, shard):
    folder = _copy(seeds, "sharded", tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a file inside the model folder") as info:
        autolm.AutoModelForCausalLM.from_pretrained(folder)
    assert "model.safetensors.index.json" in str(info.value) and info.value.key == f"weight_map.{name}"


def test_empty_bin_is_an_error(seeds, tmp_path):
    folder = _copy(seeds, "bin", tmp_path)
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        autolm.AutoModelForCausalLM.from_pretrained(folder)


def test_bin_with_values_that_are_not_tensors_names_the_key(seeds, tmp_path):
    folder = _copy(seeds, "bin", tmp_path)
    torch.save({"model.norm.weight": [1, 2]}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="model.norm.weight") as info:
        autolm.AutoModelForCausalLM.from_pretrained(folder)
    assert info.value.key == "model.norm.weight"


def test_safetensors_without_tensors_is_an_error(seeds, tmp_path):
    folder = _copy(seeds, "safetensors", tmp_path)
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        autolm.AutoModelForCausalLM.from_pretrained(folder)


def test_state_dict_with_none_of_the_weights_is_an_error(seeds):
    config = autolm.AutoConfig.from_pretrained(seeds / "safetensors")
    with pytest.raises(CheckpointError, match="none of the"):
        autolm.AutoModelForCausalLM.from_pretrained(
            None, config=config, state_dict={"unrelated": torch.zeros(1)}
        )


def test_overlapping_safetensors_offsets_are_refused(seeds, tmp_path):
    folder = _copy(seeds, "safetensors", tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    names = sorted(k for k in header if k.endswith("layernorm.weight"))
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    with pytest.raises(CheckpointError, match="overlap"):
        autolm.AutoModelForCausalLM.from_pretrained(folder)


def test_zero_layers_and_minus_one_layers_are_config_errors(seeds, tmp_path):
    folder = _copy(seeds, "safetensors", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for layers in (-1, 0, 10**9):
        (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": layers}))
        with pytest.raises(ConfigError, match="num_hidden_layers") as info:
            autolm.AutoModelForCausalLM.from_pretrained(folder)
        assert "config.json" in str(info.value) and info.value.key == "num_hidden_layers"


def test_gguf_without_tensors_is_an_error(seeds, tmp_path):
    from gguf import GGUFReader

    folder = _copy(seeds, "gguf", tmp_path)
    path = folder / "model.gguf"
    fields = {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}
    path.unlink()
    fuzzing.write_gguf_fields(path, fields, {})
    with pytest.raises(GGUFError, match="no tensors"):
        autolm.AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf")


def test_gguf_nested_arrays_written_by_gguf_writer_load(seeds):
    """The seed GGUF holds fuzz.nested = [[1, 2], [3, 4, 5]], as GGUFWriter writes a list of lists."""
    gguf = autolm.gguf.read_gguf(seeds / "gguf" / "model.gguf")
    assert gguf.get("fuzz.nested") == [[1, 2], [3, 4, 5]]
    model = autolm.AutoModelForCausalLM.from_pretrained(seeds / "gguf", gguf_file="model.gguf")
    assert model.config.num_hidden_layers == 2


def test_gguf_metadata_of_the_wrong_type_names_the_key(seeds, tmp_path):
    from gguf import GGUFReader

    folder = _copy(seeds, "gguf", tmp_path)
    path = folder / "model.gguf"
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.data.copy(), t.tensor_type) for t in reader.tensors}
    del reader
    path.unlink()
    fuzzing.write_gguf_fields(path, fields | {"llama.block_count": "two"}, tensors)
    with pytest.raises(GGUFError, match="llama.block_count") as info:
        autolm.AutoConfig.from_pretrained(folder, gguf_file="model.gguf")
    assert info.value.key == "llama.block_count"


def test_generation_config_values_are_checked_when_read(seeds, tmp_path):
    folder = _copy(seeds, "safetensors", tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": "8", "custom_key": 1}))
    with pytest.raises(ConfigError, match="max_new_tokens") as info:
        autolm.GenerationConfig.from_pretrained(folder)
    assert "generation_config.json" in str(info.value)
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 8, "custom_key": 1}))
    assert autolm.GenerationConfig.from_pretrained(folder).custom_key == 1
