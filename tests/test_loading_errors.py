"""Bad checkpoints and arguments: each a clear error, never a half-loaded model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import input_ids, make_reference, save_reference
from safetensors.torch import save_file

import autolm
from autolm.errors import CheckpointError


@pytest.fixture
def model_dir(tmp_path):
    return save_reference(make_reference("llama"), tmp_path / "m")


def test_loading_info_reports_extra_and_removed_keys(model_dir):
    state = make_reference("llama").state_dict()
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.extra.weight"] = torch.zeros(3)
    (model_dir / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, model_dir / "model.safetensors")
    model, info = autolm.AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert info["missing_keys"] == ["model.layers.1.mlp.up_proj.weight"]
    assert info["unexpected_keys"] == ["model.extra.weight"]
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []
    assert not any(p.is_meta for p in model.parameters())
    with pytest.raises(CheckpointError, match="strict"):
        autolm.AutoModelForCausalLM.from_pretrained(model_dir, strict=True)


def test_missing_weights_are_logged(model_dir, caplog):
    state = make_reference("llama").state_dict()
    state.pop("model.norm.weight")
    (model_dir / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, model_dir / "model.safetensors")
    with caplog.at_level("WARNING", logger="autolm"):
        model = autolm.AutoModelForCausalLM.from_pretrained(model_dir)
    assert "model.norm.weight" in caplog.text
    assert torch.equal(model.model.norm.weight, torch.ones(32))  # initialised as a norm, not left empty


def test_no_weights(tmp_path, model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors.*pytorch_model.bin"):
        autolm.AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.mark.parametrize("keep", [4, 100, -200])
def test_truncated_safetensors(model_dir, keep):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        autolm.AutoModelForCausalLM.from_pretrained(model_dir)


def test_corrupt_header(model_dir):
    path = model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        autolm.AutoModelForCausalLM.from_pretrained(model_dir)


def test_corrupt_bin(tmp_path):
    d = save_reference(make_reference("llama"), tmp_path / "b", "bin")
    (d / "pytorch_model.bin").write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        autolm.AutoModelForCausalLM.from_pretrained(d)


def test_bin_with_arbitrary_objects_is_refused(tmp_path):
    d = save_reference(make_reference("llama"), tmp_path / "b", "bin")

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model.norm.weight": torch.ones(32), "x": Payload()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles"):
        autolm.AutoModelForCausalLM.from_pretrained(d)


def test_missing_shard(tmp_path):
    d = save_reference(make_reference("llama"), tmp_path / "s", "sharded_safetensors")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (d / victim).unlink()
    with pytest.raises(CheckpointError, match=victim):
        autolm.AutoModelForCausalLM.from_pretrained(d)


def test_wrong_shape_names_key_and_shapes(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] = 40
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        autolm.AutoModelForCausalLM.from_pretrained(model_dir)
    assert "model.layers.0.mlp.up_proj.weight" in str(err.value)
    assert "[48, 32]" in str(err.value) and "[40, 32]" in str(err.value)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(
        model_dir, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert ("model.layers.0.mlp.up_proj.weight", (48, 32), (40, 32)) in info["mismatched_keys"]
    assert "model.layers.0.mlp.up_proj.weight" in info["missing_keys"]
    assert torch.isfinite(model(input_ids()).logits).all()


def test_unknown_dtype(model_dir):
    with pytest.raises(ValueError, match="Unknown dtype 'float33'.*bfloat16"):
        autolm.AutoModelForCausalLM.from_pretrained(model_dir, dtype="float33")


def test_bad_device_map(model_dir):
    with pytest.raises(ValueError, match="device_map"):
        autolm.AutoModelForCausalLM.from_pretrained(
            model_dir, device_map={"model": "cpu", "lm_head": "cuda:1"}
        )
