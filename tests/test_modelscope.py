"""ModelScope as a second source: a loopback server answering the endpoints the official client calls."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from autolm.errors import HubUnreachableError, MissingFilesError, ModelNotFoundError
from autolm.hub import open_repo

pytest.importorskip("modelscope_hub")

FILES = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": b"\x01" * 3000}


@pytest.fixture(scope="module")
def ms_server():
    log: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, send_body: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_GET(self, send_body: bool = True) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            log.append(self.path)
            if url.path == "/api/v1/models/org/tiny/repo/files":
                files = [
                    {
                        "Path": k,
                        "Name": k,
                        "Type": "blob",
                        "Size": len(v),
                        "Sha256": hashlib.sha256(v).hexdigest(),
                    }
                    for k, v in FILES.items()
                ]
                return self._send(
                    200, json.dumps({"Code": 200, "Success": True, "Data": {"Files": files}}).encode()
                )
            if url.path == "/api/v1/models/org/tiny/repo" and query.get("FilePath", [""])[0] in FILES:
                return self._send(200, FILES[query["FilePath"][0]], send_body)
            self._send(
                404, b'{"Code": 10010205001, "Message": "model not found", "Success": false}', send_body
            )

        def do_HEAD(self) -> None:
            self.do_GET(send_body=False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.log = log
    yield server
    server.shutdown()


@pytest.fixture
def ms(ms_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{ms_server.server_address[1]}")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ms_server.log.clear()
    return ms_server


@pytest.mark.parametrize("select", ["kwarg", "AUTOLM_HUB", "USE_MODELSCOPE_HUB"])
def test_download_cache_offline(ms, tmp_path, monkeypatch, select):
    kwargs = {"hub": "modelscope"} if select == "kwarg" else {}
    if select == "AUTOLM_HUB":
        monkeypatch.setenv("AUTOLM_HUB", "modelscope")
    if select == "USE_MODELSCOPE_HUB":
        monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    repo = open_repo("org/tiny", **kwargs)
    assert repo.exists("model.safetensors") and not repo.exists("model.onnx")
    config, weights = repo.fetch(["config.json", "model.safetensors"])
    assert config.read_bytes() == FILES["config.json"] and weights.stat().st_size == 3000
    assert str(tmp_path / "ms") in str(config)

    ms.log.clear()
    offline = open_repo("org/tiny", local_files_only=True, **kwargs)
    assert offline.get("config.json") == config and ms.log == []
    weights.unlink()
    with pytest.raises(MissingFilesError) as e:
        offline.fetch(["model.safetensors"])
    assert (
        "model.safetensors" in str(e.value)
        and "org/tiny" in str(e.value)
        and "--hub modelscope" in str(e.value)
    )


def test_errors(ms, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="org/nope"):
        open_repo("org/nope", hub="modelscope")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELSCOPE_API_MAX_RETRIES", "0")
    with pytest.raises(HubUnreachableError, match="MODELSCOPE_ENDPOINT"):
        open_repo("org/tiny", hub="modelscope")


def test_missing_client_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modelscope_hub", None)
    with pytest.raises(ModuleNotFoundError, match="pip install modelscope-hub"):
        open_repo("org/tiny", hub="modelscope")
