"""Custom code in repos (auto_map): refused without consent, run when trusted or pinned, isolated per repo.

Every code file writes a sentinel when it runs, so "nothing ran" is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hubserver import commit_files, make_repo, serve_repos
from remote_repos import (
    CODE_FILES,
    code_files,
    custom_files,
    expected_logits,
    transformers_files,
    weights,
    write,
)

from autolm import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from autolm.errors import RemoteCodeDependencyError, RemoteCodeError, RemoteCodePinError
from autolm.hub import clear_resolved, open_repo
from autolm.remote_code import bundle_hash, describe_remote_code, find_bundle

IDS = torch.tensor([[1, 2, 3, 4, 5]])


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLM_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setenv("X_SENTINEL_DIR", str(tmp_path / "ran"))
    monkeypatch.delenv("AUTOLM_LOCK", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray autolm.lock from the working directory
    (tmp_path / "ran").mkdir()
    return tmp_path


def ran(env: Path) -> list[str]:
    return sorted(p.name for p in (env / "ran").iterdir())


def pin_of(path) -> str:
    return find_bundle(open_repo(path)).pin


def test_refused_without_consent_and_nothing_runs(env):
    repo = write(env / "a", custom_files("a"))
    modules_before = set(sys.modules)
    for load in (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer):
        for trust in ({}, {"trust_remote_code": False}):
            with pytest.raises(RemoteCodeError) as e:
                load.from_pretrained(repo, **trust)
            msg = str(e.value)
            assert "custom code" in msg and "trust_remote_code=True" in msg
            for f in describe_remote_code(repo)["files"]:  # each file, with its sha256
                assert f["path"] in msg and f["sha256"] in msg
            assert pin_of(repo) in msg
    assert ran(env) == []
    assert not [m for m in set(sys.modules) - modules_before if m.startswith("autolm_remote_")]


def test_trusted_code_loads_runs_and_tokenizes(env):
    repo = write(env / "a", custom_files("a"))
    model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__name__ == "XForCausalLM" and type(model.config).__name__ == "XConfig"
    torch.testing.assert_close(model(IDS).logits, expected_logits(weights(0), IDS))
    assert type(AutoModel.from_pretrained(repo, trust_remote_code=True)).__name__ == "XModel"
    tok = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
    assert type(tok).__name__ == "XTokenizerFast" and tok.shout("hi") == "HI"
    assert tok("hello world code")["input_ids"] == [1, 2, 4]
    assert ran(env) == [f"{m}.a.ran" for m in ("configuration_x", "helpers", "modeling_x", "tokenization_x")]
    assert "modeling_x" not in sys.modules and "helpers" not in sys.modules  # never importable bare


def test_pins_argument_mapping_and_lock_files(env):
    repo = write(env / "a", custom_files("a"))
    pin = pin_of(repo)
    assert type(AutoConfig.from_pretrained(repo, trust_remote_code=pin)).__name__ == "XConfig"
    assert AutoConfig.from_pretrained(repo, trust_remote_code=f"sha256:{pin}").vocab_size == 32
    files = {f["path"]: f["sha256"] for f in describe_remote_code(repo)["files"]}
    AutoConfig.from_pretrained(repo, trust_remote_code=files)
    with pytest.raises(RemoteCodePinError, match=r"helpers\.py changed"):
        AutoConfig.from_pretrained(repo, trust_remote_code={**files, "helpers.py": "0" * 64})
    with pytest.raises(RemoteCodePinError, match="tokenization_x.py is new"):
        AutoConfig.from_pretrained(
            repo, trust_remote_code={k: v for k, v in files.items() if "token" not in k}
        )

    # autolm.lock: JSON given by path, TOML found in the working directory
    key = str(repo.resolve())
    lock = env / "pins.json"
    lock.write_text(json.dumps({key: pin}))
    AutoModelForCausalLM.from_pretrained(repo, lock_file=lock)
    lock.write_text(json.dumps({key: "f" * 64}))
    with pytest.raises(RemoteCodePinError):
        AutoModelForCausalLM.from_pretrained(repo, lock_file=lock, trust_remote_code=True)
    (env / "autolm.lock").write_text(f'"{key}" = "{pin}"\n')
    assert type(AutoTokenizer.from_pretrained(repo)).__name__ == "XTokenizerFast"
    with pytest.raises(RemoteCodeError):  # an explicit False is never overridden
        AutoConfig.from_pretrained(repo, trust_remote_code=False)


def test_same_file_names_load_side_by_side(env):
    a = write(env / "a", custom_files("a", seed=0))
    b = write(env / "b", custom_files("b", seed=1))
    ma = AutoModelForCausalLM.from_pretrained(a, trust_remote_code=True)
    mb = AutoModelForCausalLM.from_pretrained(b, trust_remote_code=True)
    assert (ma.kind, mb.kind) == ("a", "b") and type(ma) is not type(mb)
    torch.testing.assert_close(ma(IDS).logits, expected_logits(weights(0), IDS))
    torch.testing.assert_close(mb(IDS).logits, expected_logits(weights(1), IDS))
    assert type(ma).__module__.split(".")[0] != type(mb).__module__.split(".")[0]


def test_native_model_type_keeps_autolm_classes(env, caplog):
    from autolm.models.llama import LlamaConfig, LlamaForCausalLM

    custom = write(env / "custom_llama", custom_files("l", model_type="llama"))
    assert type(AutoConfig.from_pretrained(custom, trust_remote_code=True)) is LlamaConfig  # native wins
    assert ran(env) == []
    forced = AutoModelForCausalLM.from_pretrained(custom, trust_remote_code=True, prefer_remote_code=True)
    assert type(forced).__name__ == "XForCausalLM"

    plain = env / "plain_llama"
    config = AutoConfig.for_model(
        "llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(plain)
    assert type(AutoConfig.from_pretrained(plain)) is LlamaConfig
    assert type(AutoModelForCausalLM.from_pretrained(plain)) is LlamaForCausalLM


def test_missing_packages_fail_before_import(env):
    extra = "import not_installed_pkg_xyz\nfrom other_missing_zz.sub import thing\ntry:\n    import opt_q\nexcept ImportError:\n    pass"
    repo = write(env / "m", custom_files("m", extra_import=extra))
    with pytest.raises(RemoteCodeDependencyError) as e:
        AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
    assert "pip install not_installed_pkg_xyz other_missing_zz" in str(e.value)
    assert "opt_q" not in str(e.value)
    assert "modeling_x.m.ran" not in ran(env)
    # the config's code needs nothing missing: it still loads
    assert type(AutoConfig.from_pretrained(repo, trust_remote_code=True)).__name__ == "XConfig"


def test_transformers_based_code_matches_transformers(env, monkeypatch):
    transformers = pytest.importorskip("transformers")
    repo = write(env / "tx", transformers_files())
    model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__name__ == "TxForCausalLM" and isinstance(model, transformers.PreTrainedModel)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])

    monkeypatch.setenv("HF_MODULES_CACHE", str(env / "hf_modules"))
    reference = transformers.AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits)

    # transformers' own save_pretrained carries the code too
    model.save_pretrained(env / "saved")
    assert json.loads((env / "saved" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_tx.TxConfig",
        "AutoModelForCausalLM": "modeling_tx.TxForCausalLM",
    }
    again = AutoModelForCausalLM.from_pretrained(env / "saved", trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(again(IDS).logits, reference(IDS).logits)


PROMPT_SCRIPT = """
import sys
from autolm import AutoConfig
from autolm.errors import RemoteCodeError
try:
    print("LOADED", type(AutoConfig.from_pretrained(sys.argv[1])).__name__)
except RemoteCodeError:
    print("REFUSED")
"""


@pytest.mark.parametrize("answer", ["y", "n", None])
def test_interactive_prompt(env, answer):
    pexpect = pytest.importorskip("pexpect")
    repo = write(env / "a", custom_files("a"))
    script = env / "load.py"
    script.write_text(PROMPT_SCRIPT)
    child = pexpect.spawn(
        sys.executable,
        [str(script), str(repo)],
        env={**os.environ, "AUTOLM_REMOTE_CODE_TIMEOUT": "1.5"},
        encoding="utf-8",
        timeout=30,
    )
    child.expect_exact("Do you wish to run the custom code? [y/N]")
    if answer is not None:
        child.sendline(answer)
    child.expect(["LOADED XConfig", "REFUSED"])
    assert child.after == ("LOADED XConfig" if answer == "y" else "REFUSED")
    child.expect(pexpect.EOF)
    assert ran(env) == (["configuration_x.a.ran"] if answer == "y" else [])


# --- from the hub ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    model = make_repo(tmp / "src" / "xmodel", custom_files("h"))
    commit_files(model, {}, branch="dev")
    code = make_repo(tmp / "src" / "xcode", code_files("c"))
    user = make_repo(tmp / "src" / "xuser", custom_files("u", code_repo="org/xcode", seed=2))
    with serve_repos({"org/xmodel": model, "org/xcode": code, "org/xuser": user}, tmp) as server:
        server.src = model
        yield server


@pytest.fixture
def hub_env(hub, env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(env / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    clear_resolved()
    return env


def test_hub_pin_on_a_branch_then_a_changed_byte_is_refused(hub, hub_env):
    pin = bundle_hash({n: hashlib.sha256(d).hexdigest() for n, d in code_files("h").items()})
    model = AutoModelForCausalLM.from_pretrained("org/xmodel", revision="dev", trust_remote_code=pin)
    torch.testing.assert_close(model(IDS).logits, expected_logits(weights(0), IDS))
    # a pin is about content: a fresh download of the same code still matches
    AutoConfig.from_pretrained("org/xmodel", revision="dev", trust_remote_code=pin, force_download=True)

    source = code_files("h")["modeling_x.py"]
    commit_files(
        hub.src,
        {"modeling_x.py": source.replace(b"* self.config.scale", b"* self.config.scalf")},
        branch="dev",
    )
    clear_resolved()
    for p in (hub_env / "ran").iterdir():
        p.unlink()
    with pytest.raises(RemoteCodePinError, match=r"modeling_x\.py changed") as e:
        AutoModelForCausalLM.from_pretrained("org/xmodel", revision="dev", trust_remote_code=pin)
    assert "helpers.py changed" not in str(e.value)
    assert ran(hub_env) == []


def test_hub_code_from_another_repo_saved_for_offline_use(hub, hub_env):
    model = AutoModelForCausalLM.from_pretrained("org/xuser", trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained("org/xuser", trust_remote_code=True)
    assert model.kind == "c" and tok.kind == "c"
    torch.testing.assert_close(model(IDS).logits, expected_logits(weights(2), IDS))

    out = hub_env / "saved"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_x.XForCausalLM"
    assert json.loads((out / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][1] == (
        "tokenization_x.XTokenizerFast"
    )
    assert all((out / name).is_file() for name in CODE_FILES)

    with hub.down():
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            pin = pin_of(out)
            again = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=pin, local_files_only=True)
            tok2 = AutoTokenizer.from_pretrained(out, trust_remote_code=pin, local_files_only=True)
        finally:
            del os.environ["HF_HUB_OFFLINE"]
    torch.testing.assert_close(again(IDS).logits, model(IDS).logits)
    assert tok2("hello runs")["input_ids"] == tok("hello runs")["input_ids"] == [1, 5]
