"""A real Hub API on loopback for tests: olah serving local git repositories, behind a counting proxy.

    with serve_repos({"org/name": make_repo(tmp / "src", {"config.json": b"{}"})}, tmp) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        ...
        assert hub.count() == 0

`hub` is the endpoint URL (a `str`) that also counts the requests it relays, can cut a transfer after
N bytes (`hub.cut_after`) and can go down for a while (`with hub.down(): ...`).
Olah takes a couple of seconds to start, so start it once per test module.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_MIN_SIZE = 1024  # files at least this big become git-lfs pointers, like weights on the real Hub

# --- git repositories ------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    out = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def commit_files(
    repo: Path,
    files: dict[str, bytes],
    *,
    branch: str | None = None,
    tag: str | None = None,
    message: str = "update",
) -> str:
    """Write `files` into git repo `repo` (on `branch`, created if needed), commit, tag; return the sha.

    Files of `LFS_MIN_SIZE` bytes or more are stored the way git-lfs does (a pointer in git, the bytes
    under .git/lfs/objects), so the server reports them with a sha256 etag.
    """
    if branch is not None:
        existing = _git(repo, "branch", "--list", branch)
        _git(repo, "checkout", "-q", *([] if existing else ["-b"]), branch)
    for name, data in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(data) >= LFS_MIN_SIZE:
            oid = hashlib.sha256(data).hexdigest()
            obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            data = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
            )
        path.write_bytes(data)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", message)
    if tag is not None:
        _git(repo, "tag", tag)
    sha = _git(repo, "rev-parse", "HEAD")
    if branch is not None:
        _git(repo, "checkout", "-q", "main")
    return sha


def make_repo(path: Path, files: dict[str, bytes]) -> Path:
    """A new git repo at `path` with `files` committed on `main`."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    commit_files(path, files, message="initial")
    return path


def head(repo: Path, ref: str = "main") -> str:
    return _git(repo, "rev-parse", ref)


# --- the counting proxy ----------------------------------------------------------------------------

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class HubServer(str):
    """The endpoint URL, plus the requests that reached it."""

    def __new__(cls, url: str, proxy: _Proxy):
        self = super().__new__(cls, url)
        self._proxy = proxy
        return self

    @property
    def url(self) -> str:
        return str(self)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request relayed so far."""
        return list(self._proxy.log)

    def count(self) -> int:
        return len(self._proxy.log)

    def reset(self) -> None:
        self._proxy.log.clear()

    def cut_after(self, n_bytes: int | None) -> None:
        """Drop the connection after sending `n_bytes` of a file body (None: never)."""
        self._proxy.cut_after = n_bytes

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Stop listening (connections are refused), then come back on the same port."""
        self._proxy.stop()
        try:
            yield
        finally:
            self._proxy.start()


class _Proxy:
    def __init__(self, upstream_port: int, port: int = 0):
        self.upstream_port = upstream_port
        self.port = port
        self.log: list[tuple[str, str]] = []
        self.cut_after: int | None = None
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                proxy.log.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                # A forward proxy gets the absolute URL; keep only the path for olah.
                path = self.path.split("://", 1)[1].split("/", 1)[1] if "://" in self.path else self.path[1:]
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.request(self.command, "/" + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_HEADERS:
                        self.send_header(k, v)
                size = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                if size is not None:
                    self.send_header("Content-Length", size)
                self.end_headers()
                if self.command == "HEAD":
                    return
                cut = proxy.cut_after
                if cut is not None and "/resolve/" in self.path and len(data) > cut:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = _relay

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# --- olah ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _olah_cli() -> str:
    exe = Path(sys.executable).with_name("olah-cli")
    return str(exe) if exe.exists() else "olah-cli"


@contextlib.contextmanager
def serve_repos(repos: dict[str, Path], tmp: Path, timeout: float = 60.0) -> Iterator[HubServer]:
    """Serve git repos (`{"org/name": path}`) through olah in offline mode on 127.0.0.1.

    Yields a `HubServer`: the endpoint URL to put in `HF_ENDPOINT`, which counts requests.
    Repos added to `repos` later are not seen; create them all first (their commits may change).
    """
    tmp = Path(tmp)
    mirrors = tmp / "olah-mirrors"
    for repo_id, path in repos.items():
        link = mirrors / "models" / repo_id
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    port = free_port()
    config = tmp / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'repos-path = "{tmp / "olah-repos"}"\nmirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    log = open(tmp / "olah.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [_olah_cli(), "-c", str(config), "--log-path", str(tmp / "olah-logs")],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proxy = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"olah exited: {(tmp / 'olah.out').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"olah did not start in {timeout}s")
            time.sleep(0.1)
        proxy = _Proxy(port)
        yield HubServer(f"http://127.0.0.1:{proxy.port}", proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)
