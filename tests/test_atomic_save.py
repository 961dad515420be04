"""An interrupted save_pretrained leaves the old model or the new one, never a mix.

A forked child saves a "new" model (and a tokenizer) over a folder holding an "old" one and is killed
with SIGKILL at 20 moments spread over the save; after each kill the folder must load with autolm as
exactly the old or exactly the new model, its config matching its weights.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import autolm
from autolm.fileio import atomic_path, atomic_write_text, is_temp_name
from autolm.hub import LocalRepo
from autolm.models.llama import LlamaConfig, LlamaForCausalLM
from autolm.weights import checkpoint_files

sys.path.insert(0, str(Path(__file__).parent))
from generation_helpers import write_tokenizer  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kills need os.fork")

KILLS = 20


def make_model(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=4000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM.from_config(config)  # about 12-16 MB of float32


def temps(directory: Path) -> set[str]:
    # autolm's temp names, and those of the libraries writing into them (safetensors: `.tmpXXXXXX`)
    return {p.name for p in directory.iterdir() if p.name.startswith(".")}


def fork_save(directory: Path, model, shard: str, tokenizer) -> int:
    pid = os.fork()
    if pid == 0:  # child: save, then leave without running any of pytest's cleanup
        code = 1
        try:
            tokenizer.save_pretrained(directory)
            model.save_pretrained(directory, max_shard_size=shard)
            code = 0
        finally:
            os._exit(code)
    return pid


def which(directory: Path, old, new) -> str:
    """'old' or 'new': the model the folder loads as (exactly: every weight and the config)."""
    loaded = autolm.AutoModelForCausalLM.from_pretrained(directory)
    state = loaded.state_dict()
    for label, model in (("old", old), ("new", new)):
        reference = model.state_dict()
        if (
            state.keys() == reference.keys()
            and all(torch.equal(state[k], reference[k]) for k in state)
            and loaded.config.num_hidden_layers == model.config.num_hidden_layers
        ):
            return label
    raise AssertionError(
        f"{directory} loads as neither the old nor the new model: {sorted(os.listdir(directory))}"
    )


SCENARIOS = {
    # old (layers, seed, max_shard_size) -> new
    "single_to_3_shards_more_layers": ((2, 0, "5GB"), (3, 1, "5MB")),
    "3_shards_to_single_fewer_layers": ((3, 1, "5MB"), (2, 0, "5GB")),
    "3_shards_to_3_shards_same_names": ((3, 2, "5MB"), (3, 3, "5MB")),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_killed_save_leaves_old_or_new(tmp_path, scenario):
    (old_layers, old_seed, old_shard), (new_layers, new_seed, new_shard) = SCENARIOS[scenario]
    old, new = make_model(old_layers, old_seed), make_model(new_layers, new_seed)
    tokenizer = autolm.AutoTokenizer.from_pretrained(write_tokenizer(tmp_path / "tok"))
    folder = tmp_path / "model"

    def reset() -> None:
        before = temps(folder) if folder.exists() else set()
        old.save_pretrained(folder, max_shard_size=old_shard)
        tokenizer.save_pretrained(folder)
        assert temps(folder) == before, "a successful save left temp files"
        assert which(folder, old, new) == "old"

    # how long one save takes in a child, measured as the kills will see it
    durations = []
    for _ in range(2):
        reset()
        start = time.perf_counter()
        _, status = os.waitpid(fork_save(folder, new, new_shard, tokenizer), 0)
        durations.append(time.perf_counter() - start)
        assert os.waitstatus_to_exitcode(status) == 0
        assert which(folder, old, new) == "new"
        assert not temps(folder), "a successful save left temp files"
    duration = max(durations)
    assert (len(checkpoint_files(LocalRepo(folder))) > 1) == (new_shard != "5GB")

    seen = {"old": 0, "new": 0}
    left_temps = 0
    for i in range(KILLS):
        reset()
        pid = fork_save(folder, new, new_shard, tokenizer)
        time.sleep(duration * (i + 0.5) / KILLS)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        left_temps += bool(temps(folder))
        seen[which(folder, old, new)] += 1
        # the tokenizer loads too, whatever temp files the kill left beside it
        assert autolm.AutoTokenizer.from_pretrained(folder).get_vocab() == tokenizer.get_vocab()
    print(f"{scenario}: save {duration * 1000:.0f} ms, {KILLS} kills -> {seen}, {left_temps} left temp files")
    assert seen["old"] + seen["new"] == KILLS


def test_loaders_ignore_temp_files(tmp_path):
    """What a killed save leaves (a half-written temp beside each file) changes nothing a loader reads."""
    model = make_model(2, 0)
    folder = tmp_path / "model"
    model.save_pretrained(folder, max_shard_size="5MB")
    autolm.AutoTokenizer.from_pretrained(write_tokenizer(tmp_path / "tok")).save_pretrained(folder)
    for path in list(folder.iterdir()):
        data = path.read_bytes()
        tmp = folder / f".{path.name}.4242.0123abcd.tmp"
        tmp.write_bytes(data[: len(data) // 2])
        assert is_temp_name(tmp.name)
    assert all(not is_temp_name(p.name) for p in checkpoint_files(LocalRepo(folder)))
    loaded = autolm.AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert autolm.AutoTokenizer.from_pretrained(folder).vocab_size > 0


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_text(path, "old")

    class Boom(KeyboardInterrupt):
        pass

    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise Boom
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_resaves_leave_only_the_new_checkpoint(tmp_path):
    """Each save over the last (formats, shard counts, colliding shard names) leaves just its own files."""
    folder = tmp_path / "model"
    steps = [("5MB", True), ("5MB", True), ("5GB", False), ("5MB", False), ("5MB", True), ("5GB", True)]
    for seed, (shard, safe) in enumerate(steps):
        model = make_model(2 + seed % 2, seed)
        model.save_pretrained(folder, max_shard_size=shard, safe_serialization=safe)
        files = checkpoint_files(LocalRepo(folder))
        weights = {p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")}
        assert weights == {p.name for p in files}, (seed, sorted(os.listdir(folder)))
        assert all(p.suffix == (".safetensors" if safe else ".bin") for p in files)
        assert (len(files) > 1) == (shard == "5MB")
        indexes = {p.name for p in folder.glob("*.index.json")}
        assert indexes == (
            {"model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"}
            if len(files) > 1
            else set()
        )
        assert not temps(folder)
        loaded = autolm.AutoModelForCausalLM.from_pretrained(folder)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
