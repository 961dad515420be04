"""Resolver against a real Hub API (olah on loopback): fetch only what is needed, warm cache, offline, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hubserver import commit_files, head, make_repo, serve_repos

from autolm.errors import (
    DiskFullError,
    GatedRepoError,
    HubUnreachableError,
    MissingFilesError,
    ModelNotFoundError,
    RevisionNotFoundError,
)
from autolm.hub import clear_resolved, open_repo

CONFIG = b'{"model_type": "llama", "hidden_size": 8}'


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    repo = make_repo(
        tmp / "src" / "tiny",
        {
            "config.json": CONFIG,
            "generation_config.json": b'{"max_length": 20}',
            "model.safetensors": os.urandom(4096),
            "pytorch_model.bin": os.urandom(4096),
            "model.onnx": os.urandom(4096),
            "flax_model.msgpack": os.urandom(4096),
            "sub/config.json": b'{"model_type": "bert"}',
        },
    )
    commit_files(repo, {"config.json": b'{"model_type": "llama", "dev": true}'}, branch="dev", tag="v2")
    with serve_repos({"org/tiny": repo}, tmp) as server:
        server.src = repo
        yield server


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    """A fresh cache per test; HF_ENDPOINT and HF_HUB_CACHE set after import, as a user would."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    clear_resolved()
    open_repo("org/tiny", cache_dir=tmp_path / "warmup")  # huggingface_hub's one-off telemetry request
    clear_resolved()
    hub.reset()
    return tmp_path / "cache"


def blobs(cache: Path) -> set[str]:
    snap = next((cache / "models--org--tiny" / "snapshots").iterdir())
    return {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.exists()}


def test_fetches_only_requested_files(env, hub):
    repo = open_repo("org/tiny")
    assert (
        repo.exists("model.safetensors")
        and repo.exists("pytorch_model.bin")
        and not repo.exists("tf_model.h5")
    )
    config = repo.get_optional("config.json")
    assert repo.get_optional("tokenizer.json") is None
    repo.fetch(["model.safetensors"])
    assert config.read_bytes() == CONFIG
    assert blobs(env) == {"config.json", "model.safetensors"}


def test_revision_by_branch_tag_and_sha(env, hub):
    sha_main, sha_dev = head(hub.src, "main"), head(hub.src, "dev")
    assert open_repo("org/tiny").revision == sha_main
    assert b'"dev"' in open_repo("org/tiny", revision="dev").get("config.json").read_bytes()
    assert open_repo("org/tiny", revision="v2").revision == sha_dev
    assert open_repo("org/tiny", revision=sha_main).get("config.json").read_bytes() == CONFIG
    assert (env / "models--org--tiny" / "refs" / "dev").read_text() == sha_dev


def test_branch_that_moved_is_followed(env, hub):
    # its own branch, so the other tests' branches and tags stay put
    commit_files(hub.src, {"config.json": b'{"model_type": "llama", "moving": 1}'}, branch="moving")
    first = open_repo("org/tiny", revision="moving")
    assert b'"moving": 1' in first.get("config.json").read_bytes()
    commit_files(hub.src, {"config.json": b'{"model_type": "llama", "moving": 2}'}, branch="moving")
    clear_resolved()
    moved = open_repo("org/tiny", revision="moving")
    assert moved.revision == head(hub.src, "moving") != first.revision
    assert b'"moving": 2' in moved.get("config.json").read_bytes()


def test_subfolder(env, hub):
    assert open_repo("org/tiny", subfolder="sub").get("config.json").read_bytes() == b'{"model_type": "bert"}'


def test_warm_cache_requests(env, hub):
    sha = head(hub.src)
    open_repo("org/tiny", revision=sha).fetch(["config.json", "generation_config.json", "model.safetensors"])
    hub.reset()
    repo = open_repo("org/tiny", revision=sha)
    repo.get_optional("config.json"), repo.exists("model.safetensors"), repo.fetch(["model.safetensors"])
    assert hub.count() == 0, hub.requests
    with hub.down():  # and with the server gone
        assert open_repo("org/tiny", revision=sha).get("model.safetensors").stat().st_size == 4096
    # a branch: one request to resolve it, shared by every open_repo of the load
    clear_resolved()
    hub.reset()
    for _ in range(3):
        r = open_repo("org/tiny")
        (
            r.get_optional("config.json"),
            r.get_optional("generation_config.json"),
            r.fetch(["model.safetensors"]),
        )
    assert hub.requests == [("GET", "/api/models/org/tiny/revision/main")]
    # once the branch's commit is cached, the one request is a cheap HEAD of a file it already has
    clear_resolved()
    hub.reset()
    r = open_repo("org/tiny")
    r.get_optional("config.json"), r.fetch(["model.safetensors"])
    assert hub.requests == [("HEAD", "/org/tiny/resolve/main/config.json")]
    # offline: none
    hub.reset()
    r = open_repo("org/tiny", local_files_only=True)
    r.get_optional("config.json"), r.fetch(["model.safetensors"])
    assert hub.count() == 0


def test_force_download_refetches(env, hub):
    open_repo("org/tiny").get("config.json")
    hub.reset()
    clear_resolved()
    repo = open_repo("org/tiny", force_download=True)
    repo.get("config.json")
    repo.get("config.json")  # once per load, not once per call
    assert sum("/resolve/" in p and m == "GET" for m, p in hub.requests) == 1


@pytest.mark.parametrize("how", ["local_files_only", "HF_HUB_OFFLINE"])
def test_offline_missing_file_error(env, hub, monkeypatch, how):
    repo = open_repo("org/tiny")
    repo.fetch(["config.json", "model.safetensors"])
    link = repo.local_dir / "model.safetensors"
    os.unlink(Path(os.path.realpath(link)))
    link.unlink()
    hub.reset()
    kwargs = {"local_files_only": True} if how == "local_files_only" else {}
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: still honoured
    repo = open_repo("org/tiny", **kwargs)
    assert repo.get("config.json").read_bytes() == CONFIG
    with pytest.raises(MissingFilesError) as e:
        repo.fetch(["model.safetensors", "model.onnx"])
    msg = str(e.value)
    assert "model.safetensors" in msg and "model.onnx" in msg and "org/tiny" in msg and "main" in msg
    assert "autolm download org/tiny" in msg
    assert isinstance(e.value, FileNotFoundError)
    assert hub.count() == 0


def test_offline_uncached_revision(env, hub):
    with pytest.raises(MissingFilesError, match="autolm download org/tiny --revision dev"):
        open_repo("org/tiny", revision="dev", local_files_only=True)


def test_errors(env, hub, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="org/nope"):
        open_repo("org/nope")
    with pytest.raises(RevisionNotFoundError, match="nobranch"):
        open_repo("org/tiny", revision="nobranch")
    with pytest.raises(ModelNotFoundError):
        open_repo("not a/valid/id")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        open_repo("org/tiny")


def test_huggingface_hub_cache_is_shared(env, hub):
    from huggingface_hub import hf_hub_download, snapshot_download

    sha = head(hub.src)
    # theirs -> ours
    snapshot_download(
        "org/tiny", revision=sha, cache_dir=env, endpoint=hub.url, allow_patterns=["config.json"]
    )
    hub.reset()
    assert (
        open_repo("org/tiny", revision=sha, local_files_only=True).get("config.json").read_bytes() == CONFIG
    )
    # ours -> theirs
    open_repo("org/tiny").fetch(["model.safetensors"])
    hub.reset()
    path = hf_hub_download(
        "org/tiny", "model.safetensors", revision=sha, cache_dir=env, local_files_only=True
    )
    assert Path(path).stat().st_size == 4096 and hub.count() == 0


def test_interrupted_download_is_never_taken_for_complete(env, hub):
    repo = open_repo("org/tiny")
    hub.cut_after(1000)
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
            repo.fetch(["model.onnx"])
    finally:
        hub.cut_after(None)
    snap = repo.local_dir
    assert not (snap / "model.onnx").exists()
    assert not any(
        p.stat().st_size < 4096 for p in (env / "models--org--tiny" / "blobs").glob("*") if len(p.name) == 64
    )
    with pytest.raises(MissingFilesError):
        open_repo("org/tiny", local_files_only=True).get("model.onnx")
    assert open_repo("org/tiny").get("model.onnx").stat().st_size == 4096


def test_proxies_apply_to_this_download_only(env, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # unreachable, except through the proxy
    hub.reset()
    repo = open_repo("org/tiny", proxies={"http": hub.url})
    assert repo.get("config.json").read_bytes() == CONFIG
    assert hub.count() >= 2 and all(p.startswith("http://127.0.0.1:9/") for _, p in hub.requests)


def test_local_paths(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert open_repo(tmp_path).get("config.json").exists()
    assert open_repo(tmp_path / "m.gguf").single_file == "m.gguf"
    with pytest.raises(MissingFilesError):
        open_repo(tmp_path).get("model.safetensors")


def test_model_loads_by_hub_id_same_as_local(hub_model, tmp_path):
    """The full loader through the hub: same logits as transformers on the same files, and offline after."""
    import torch
    import transformers

    import autolm

    url, saved, sha = hub_model
    model = autolm.AutoModelForCausalLM.from_pretrained("org/llama", revision=sha, cache_dir=tmp_path / "c")
    ref = transformers.AutoModelForCausalLM.from_pretrained(saved)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    assert not list((tmp_path / "c").rglob("pytorch_model.bin"))
    again = autolm.AutoModelForCausalLM.from_pretrained(
        "org/llama", revision=sha, cache_dir=tmp_path / "c", local_files_only=True
    )
    assert again is not None


@pytest.fixture(scope="module")
def hub_model(tmp_path_factory):
    import torch
    import transformers

    tmp = tmp_path_factory.mktemp("llama")
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp / "saved")
    files = {p.name: p.read_bytes() for p in (tmp / "saved").iterdir()}
    files["pytorch_model.bin"] = b"\0" * 2048  # must never be fetched
    repo = make_repo(tmp / "src", files)
    with serve_repos({"org/llama": repo}, tmp) as server:
        import os as _os

        old = _os.environ.get("HF_ENDPOINT")
        _os.environ["HF_ENDPOINT"] = server.url
        try:
            yield server.url, tmp / "saved", head(repo)
        finally:
            if old is None:
                _os.environ.pop("HF_ENDPOINT")
            else:
                _os.environ["HF_ENDPOINT"] = old


def test_gated_repo_error_mentions_the_token(env, monkeypatch):
    """A hub that answers 403 with the Hub's gated-repo code: the error says how to get access."""
    import http.server
    import threading

    class Gated(http.server.BaseHTTPRequestHandler):
        def _deny(self):
            body = b'{"error": "Access to model org/gated is restricted. You must have access to it."}'
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _deny

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        clear_resolved()
        with pytest.raises(GatedRepoError, match="HF_TOKEN") as err:
            open_repo("org/gated")
        assert isinstance(err.value, PermissionError) and "org/gated" in str(err.value)
    finally:
        server.shutdown()


def test_disk_full_is_named_and_leaves_no_file(env, hub, monkeypatch):
    import errno

    import huggingface_hub

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_space)
    repo = open_repo("org/tiny")
    with pytest.raises(DiskFullError, match="full") as err:
        repo.fetch(["model.safetensors"])
    assert isinstance(err.value, OSError) and "model.safetensors" in str(err.value)
    snapshots = env / "models--org--tiny" / "snapshots"
    assert not any(p.name == "model.safetensors" for p in snapshots.rglob("*"))
