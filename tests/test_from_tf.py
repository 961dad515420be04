"""from_pretrained(..., from_tf=True): TensorFlow weights (tf_model.h5) read with h5py, no TensorFlow.

The checkpoints in tests/data/tf/ were written by transformers 4.46's TF classes on TensorFlow 2.17
(scripts/make_tf_fixtures.py), with the TF model's logits on a padded batch: the oracle for the names
and layouts, which transformers 5 (the oracle for everything else) can no longer read.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import input_ids, make_reference, save_reference
from safetensors.torch import save_file

import autolm
from autolm import models
from autolm.errors import CheckpointError, MissingDependencyError, UnsupportedModelError
from autolm.hub import LocalRepo
from autolm.weights import checkpoint_files, load_checkpoint
from autolm.weights_tf import read_h5

DATA = Path(__file__).parent / "data" / "tf"
# fixture -> (transformers 5 PyTorch class, autolm Auto class)
FIXTURES = {
    "gpt2": ("GPT2LMHeadModel", "AutoModelForCausalLM"),
    "gpt2_sharded": ("GPT2LMHeadModel", "AutoModelForCausalLM"),
    "bert_seqcls": ("BertForSequenceClassification", "AutoModelForSequenceClassification"),
    "bert_mlm": ("BertForMaskedLM", "AutoModelForMaskedLM"),
    "t5": ("T5ForConditionalGeneration", "AutoModelForSeq2SeqLM"),
    "t5_gated": ("T5ForConditionalGeneration", "AutoModelForSeq2SeqLM"),
}


def expected(name: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    data = json.loads((DATA / name / "expected.json").read_text())
    return {k: torch.tensor(v) for k, v in data["inputs"].items()}, torch.tensor(data["logits"])


def tf_state(name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_files(LocalRepo(DATA / name), from_tf=True))


@pytest.mark.parametrize("name", FIXTURES)
def test_tf_weights_load_into_transformers_by_their_pytorch_names(name, tmp_path):
    """The state dict read from tf_model.h5 is the PyTorch checkpoint of the same model: transformers 5
    loads it with no missing or unexpected key and reproduces the TF model's logits."""
    import transformers

    shutil.copy(DATA / name / "config.json", tmp_path)
    save_file(dict(tf_state(name)), tmp_path / "model.safetensors")
    cls = getattr(transformers, FIXTURES[name][0])
    model, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs, logits = expected(name)
    with torch.no_grad():
        out = model.eval()(**inputs).logits
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=0)


def test_layouts():
    state = tf_state("gpt2")
    with h5py.File(DATA / "gpt2" / "tf_model.h5") as f:
        group = f["transformer"]
        c_attn = group["tfgpt2lm_head_model/transformer/h_._1/attn/c_attn/weight:0"][()]
        c_attn_bias = group["tfgpt2lm_head_model/transformer/h_._1/attn/c_attn/bias:0"][()]
        gamma = group["tfgpt2lm_head_model/transformer/ln_f/gamma:0"][()]
    # GPT-2's Conv1D is (in, out) in both frameworks; its TF bias is (1, out)
    assert torch.equal(state["transformer.h.1.attn.c_attn.weight"], torch.from_numpy(c_attn))
    assert torch.equal(state["transformer.h.1.attn.c_attn.bias"], torch.from_numpy(c_attn_bias[0]))
    assert torch.equal(state["transformer.ln_f.weight"], torch.from_numpy(gamma))
    bert = tf_state("bert_seqcls")
    with h5py.File(DATA / "bert_seqcls" / "tf_model.h5") as f:
        kernel = f["classifier"]["tf_bert_for_sequence_classification/classifier/kernel:0"][()]
    assert kernel.shape == (32, 3)  # a Dense kernel is (in, out); torch's Linear weight (out, in)
    assert torch.equal(bert["classifier.weight"], torch.from_numpy(kernel.T))
    assert "cls.predictions.bias" in tf_state("bert_mlm")  # TF's `mlm___cls` scope is PyTorch's `cls`


def test_sharded_tf_checkpoint_is_the_same_model():
    single, sharded = tf_state("gpt2"), tf_state("gpt2_sharded")
    assert len(checkpoint_files(LocalRepo(DATA / "gpt2_sharded"), from_tf=True)) == 4
    assert single.keys() == sharded.keys()
    assert all(torch.equal(single[k], sharded[k]) for k in single)


# --- from_pretrained(from_tf=True) --------------------------------------------------------------


def write_keras_h5(
    state: dict[str, torch.Tensor], path: Path, scope: str, chunks: int = 1, compression: str | None = None
) -> None:
    """A PyTorch state dict as Keras' save_weights lays it out (what TF classes of a family would write):
    a group per top-level layer, `_._` list indices, Dense kernels (in, out), Embedding `embeddings`.
    `chunks` > 1 splits each name list into `weight_names0`, `weight_names1`, ..., as Keras does with
    lists over HDF5's 64 KiB attribute limit (big models). `compression` stores the arrays chunked and
    filtered (Keras never does; other writers may)."""
    layers: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, tensor in state.items():
        parts = name.split(".")
        leaf, array = parts.pop(), tensor.numpy()
        if parts[-1] == "embed_tokens":
            leaf = "embeddings"
        elif leaf == "weight" and array.ndim == 2:
            leaf, array = "kernel", array.T
        path_parts = []
        for p in parts:
            if p.isdigit():
                path_parts[-1] += f"_._{p}"
            else:
                path_parts.append(p)
        layers.setdefault(path_parts[0], []).append(("/".join([scope, *path_parts, leaf]) + ":0", array))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, weights in layers.items():
            group = f.create_group(layer)
            names = [w.encode() for w, _ in weights]
            if chunks == 1:
                group.attrs["weight_names"] = names
            for i in range(chunks if chunks > 1 else 0):
                group.attrs[f"weight_names{i}"] = names[i::chunks]
            for w, array in weights:
                group.create_dataset(w, data=array, compression=compression)


def make_tf_llama(folder: Path, chunks: int = 1, compression: str | None = None):
    """A Llama folder whose only weights are a Keras-layout tf_model.h5, and the reference model."""
    reference = make_reference("llama")
    save_reference(reference, folder)
    (folder / "model.safetensors").unlink()
    write_keras_h5(
        reference.state_dict(), folder / "tf_model.h5", "tf_llama_for_causal_lm", chunks, compression
    )
    return folder, reference


@pytest.fixture
def tf_llama(tmp_path):
    return make_tf_llama(tmp_path / "llama")


@pytest.mark.parametrize(
    "chunks, compression", [(1, None), (3, None), (1, "gzip")], ids=["keras", "chunked_names", "gzip"]
)
def test_from_tf_loads_the_model(tmp_path, chunks, compression):
    folder, reference = make_tf_llama(tmp_path / "llama", chunks, compression)
    model, info = autolm.AutoModelForCausalLM.from_pretrained(folder, from_tf=True, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FIXTURES)
def test_from_tf_family_matches_tensorflow(name):
    """A TF checkpoint of a family autolm has loads with from_tf=True and gives the TF model's logits; one
    of a family not (yet) registered fails naming its model type, never as a half-loaded model."""
    auto = getattr(autolm, FIXTURES[name][1])
    model_type = json.loads((DATA / name / "config.json").read_text())["model_type"]
    if model_type not in models.supported_model_types():
        with pytest.raises(UnsupportedModelError, match=model_type):
            auto.from_pretrained(DATA / name, from_tf=True)
        return
    model, info = auto.from_pretrained(DATA / name, from_tf=True, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    inputs, logits = expected(name)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, logits, atol=1e-5, rtol=0)


# --- errors --------------------------------------------------------------------------------------


def test_tf_only_folder_without_from_tf_says_to_pass_it(tf_llama):
    folder, _ = tf_llama
    with pytest.raises(CheckpointError, match=r"only TensorFlow weights \(tf_model.h5\).*from_tf=True.*h5py"):
        autolm.AutoModelForCausalLM.from_pretrained(folder)


def test_from_tf_without_tf_weights_names_what_is_there(tiny_llama_dir):
    with pytest.raises(CheckpointError, match=r"from_tf=True.*no tf_model.h5.*model.safetensors"):
        autolm.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, from_tf=True)


def test_missing_h5py_says_what_to_install(tf_llama, monkeypatch):
    folder, _ = tf_llama
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install h5py.*autolm\[tf\]") as e:
        autolm.AutoModelForCausalLM.from_pretrained(folder, from_tf=True)
    assert isinstance(e.value, ImportError)


def test_truncated_or_foreign_h5(tf_llama):
    folder, _ = tf_llama
    path = folder / "tf_model.h5"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        autolm.AutoModelForCausalLM.from_pretrained(folder, from_tf=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="no 'layer_names' attribute"):
        autolm.AutoModelForCausalLM.from_pretrained(folder, from_tf=True)


# --- from the hub -------------------------------------------------------------------------------


def test_from_tf_fetches_only_the_tf_files_from_the_hub(tmp_path, monkeypatch):
    from hubserver import make_repo, serve_repos

    reference = make_reference("llama")
    saved = save_reference(reference, tmp_path / "saved")
    write_keras_h5(reference.state_dict(), saved / "tf_model.h5", "tf_llama_for_causal_lm")
    llama = {p.name: p.read_bytes() for p in saved.iterdir()}
    gpt2 = {p.name: p.read_bytes() for p in (DATA / "gpt2_sharded").iterdir()}
    gpt2["model.safetensors"] = b"\0" * 2048  # must never be fetched with from_tf
    repos = {
        "org/llama": make_repo(tmp_path / "llama", llama),
        "org/gpt2": make_repo(tmp_path / "gpt2", gpt2),
    }
    with serve_repos(repos, tmp_path) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        model = autolm.AutoModelForCausalLM.from_pretrained("org/llama", from_tf=True)
        shards = checkpoint_files(autolm.hub.open_repo("org/gpt2"), from_tf=True)
    fetched = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert "tf_model.h5" in fetched and "model.safetensors" not in fetched
    assert [p.name for p in shards] == [f"tf_model-0000{i}-of-00004.h5" for i in range(1, 5)]
    state = load_checkpoint(shards)
    assert state.keys() == tf_state("gpt2").keys()
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


def test_writing_a_loaded_weight_never_touches_the_file(tmp_path):
    """Weights kept in their TF layout map the file copy-on-write: training the model in place leaves
    the checkpoint as it was."""
    shutil.copytree(DATA / "gpt2", tmp_path / "gpt2")
    before = (tmp_path / "gpt2" / "tf_model.h5").read_bytes()
    state = load_checkpoint(checkpoint_files(LocalRepo(tmp_path / "gpt2"), from_tf=True))
    with torch.no_grad():
        for tensor in state.values():
            tensor.add_(1.0)
    del state
    assert (tmp_path / "gpt2" / "tf_model.h5").read_bytes() == before


@pytest.mark.parametrize("how", ["external_link", "external_storage"])
def test_h5_that_reads_other_files_is_refused(tf_llama, tmp_path, how):
    folder, _ = tf_llama
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password" * 64)
    path = folder / "tf_model.h5"
    with h5py.File(path, "r+") as f:
        group = f["lm_head"]
        (name,) = list(group.attrs["weight_names"])
        del group[name]
        if how == "external_link":
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other.create_dataset("w", data=np.zeros((96, 32), np.float32))
            group[name] = h5py.ExternalLink(str(tmp_path / "other.h5"), "w")
        else:
            group.create_dataset(name, shape=(32, 4), dtype="<f4", external=[(str(secret), 0, 512)])
    with pytest.raises(CheckpointError, match="from another file.*hostile"):
        autolm.AutoModelForCausalLM.from_pretrained(folder, from_tf=True)


def test_damaged_h5_raises_checkpoint_error(tmp_path):
    """Seeded byte damage in the metadata of a real tf_model.h5: each load gives the weights or a
    CheckpointError, never one of HDF5's own OSError / KeyError / RuntimeError / UnicodeError."""
    import random

    source = (DATA / "bert_seqcls" / "tf_model.h5").read_bytes()
    rng = random.Random(1)
    path = tmp_path / "tf_model.h5"
    for _ in range(40):
        damaged = bytearray(source)
        for _ in range(4):
            damaged[rng.randrange(12000)] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            read_h5(path)
        except CheckpointError:
            pass
