"""`autolm export` / `autolm verify`: an offline bundle with weights, tokenizer and custom code."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hubserver import make_repo, serve_repos
from remote_repos import CODE_FILES, code_files, custom_files, expected_logits, weights

from autolm import AutoModelForCausalLM, AutoTokenizer
from autolm.cli import main
from autolm.errors import RemoteCodeError
from autolm.hub import clear_resolved

IDS = torch.tensor([[1, 2, 3, 4, 5]])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    repos = {
        "org/xmodel": make_repo(tmp / "src" / "xmodel", custom_files("e")),
        "org/xcode": make_repo(tmp / "src" / "xcode", code_files("c")),
        "org/xuser": make_repo(tmp / "src" / "xuser", custom_files("u", code_repo="org/xcode", seed=2)),
    }
    with serve_repos(repos, tmp) as server:
        yield server


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTOLM_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("AUTOLM_LOCK", raising=False)
    monkeypatch.chdir(tmp_path)
    clear_resolved()
    return tmp_path


def test_export_loads_offline_and_verify_catches_a_changed_byte(hub, env, capsys, monkeypatch):
    out = env / "bundle"
    assert main(["export", "org/xmodel", str(out)]) == 0
    manifest = json.loads((out / "MANIFEST").read_text())
    printed = capsys.readouterr().out
    assert manifest["code_pin"] and manifest["code_pin"] in printed
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", *CODE_FILES):
        entry = manifest["files"][name]
        assert entry["size"] == (out / name).stat().st_size and len(entry["sha256"]) == 64
    assert main(["verify", str(out)]) == 0

    with hub.down():
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        pin = manifest["code_pin"]
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=pin, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(out, trust_remote_code=pin, local_files_only=True)
    torch.testing.assert_close(model(IDS).logits, expected_logits(weights(0), IDS))
    assert type(tok).__name__ == "XTokenizerFast" and model.generation_config.max_length == 12

    capsys.readouterr()
    source = (out / "modeling_x.py").read_bytes()
    (out / "modeling_x.py").write_bytes(source.replace(b"scale", b"scalf", 1))
    assert main(["verify", str(out)]) == 1
    report = capsys.readouterr().out
    assert "modeling_x.py" in report and "config.json" not in report
    with pytest.raises(RemoteCodeError, match="modeling_x.py"):
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=manifest["code_pin"])


def test_export_of_code_from_another_repo_is_self_contained(hub, env, capsys):
    out = env / "bundle"
    assert main(["export", "org/xuser", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_x.XForCausalLM"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"] == [None, "tokenization_x.XTokenizerFast"]
    assert main(["verify", str(out)]) == 0
    os.remove(out / "helpers.py")
    assert main(["verify", str(out)]) == 1
    assert "helpers.py: missing" in capsys.readouterr().out


def test_export_refuses_a_non_empty_directory(env, capsys):
    (env / "full").mkdir()
    (env / "full" / "x").write_text("x")
    assert main(["export", "org/xmodel", str(env / "full")]) == 1
    assert "not empty" in capsys.readouterr().err
