"""`autolm download` and `autolm cache ls|verify|rm` against a loopback hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hubserver import make_repo, serve_repos

from autolm.cli import main
from autolm.hub import clear_resolved


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    repo = make_repo(
        tmp / "src", {"config.json": b"{}", "model.safetensors": os.urandom(2048), "a.txt": b"x"}
    )
    with serve_repos({"org/tiny": repo}, tmp) as server:
        yield server


@pytest.fixture
def cache(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    clear_resolved()
    return tmp_path / "cache"


def test_download_ls_verify_rm(cache, capsys):
    assert main(["download", "org/tiny", "--include", "*.json", "--include", "*.safetensors"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]

    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert "org/tiny" in out and "main" in out

    assert main(["cache", "verify"]) == 0
    capsys.readouterr()
    blob = Path(os.path.realpath(path / "model.safetensors"))
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    assert main(["cache", "verify", "org/tiny"]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT" in out and blob.name in out

    (path / "config.json").unlink()
    (path / "config.json").symlink_to("../../blobs/" + "0" * 40)
    assert main(["cache", "verify"]) == 1
    assert "DANGLING" in capsys.readouterr().out

    assert main(["cache", "rm", "org/tiny", "--revision", "main"]) == 0
    assert not path.exists()
    assert main(["cache", "rm", "org/tiny"]) == 0
    assert main(["cache", "rm", "org/tiny"]) == 1


def test_verify_reports_partial_download(cache, capsys):
    assert main(["download", "org/tiny"]) == 0
    blobs = cache / "models--org--tiny" / "blobs"
    (blobs / ("a" * 64 + ".1234abcd.incomplete")).write_bytes(b"partial")
    assert main(["cache", "verify"]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out
