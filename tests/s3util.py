"""A real S3-compatible server for tests and benchmarks: moto's server on 127.0.0.1, and a
small HTTP proxy in front of it that logs every request (to count GETs) and injects faults
(503 SlowDown answers, dropped connections, answers cut in the middle of the body). Bodies are
relayed as they arrive, as S3 sends them."""

from __future__ import annotations

import http.client
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class ProxyState:
    upstream: tuple[str, int]
    log: list[Logged] = field(default_factory=list)
    # Faults for the next matching requests: ("503" | "drop" | "cut", METHOD) popped in order;
    # "cut" relays the first half of the answer's body, then drops the connection.
    faults: list[tuple[str, str]] = field(default_factory=list)
    # Run before relaying a request: each hook is called with it, and dropped once it says True
    # (a concurrent writer stepping in at an exact point of a command).
    hooks: list[Callable[[Logged], bool]] = field(default_factory=list)
    # While set, every request is dropped (the server gone), hooks still run: one may clear it.
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, key: str) -> list[Logged]:
        """GETs of object ``key`` that reached the server (faults excluded)."""
        with self.lock:
            return [r for r in self.log if r.method == "GET" and r.path.split("?")[0].endswith("/" + key) and r.status]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def _relay(self) -> None:
        state = self.server.state
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
            n = len(body)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
        entry = Logged(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        fault = None
        with state.lock:
            state.log.append(entry)
            if state.down:
                fault = "drop"
            for i, (kind, method) in enumerate(state.faults if fault is None else []):
                if method == self.command:
                    fault = kind
                    del state.faults[i]
                    break
        with state.lock:
            hooks = list(state.hooks)
        for hook in hooks:
            if hook(entry):
                with state.lock:
                    state.hooks.remove(hook)
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault == "503":
            msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        conn = http.client.HTTPConnection(*state.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP and k.lower() != "content-length"}
            if n or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(n)
            conn.request(
                self.command, self.path, body=body if n or self.command in ("PUT", "POST") else None, headers=headers
            )
            resp = conn.getresponse()
            declared = resp.getheader("Content-Length")
            # A body is relayed as it arrives (as S3 sends it), unless its length is unknown.
            data = b"" if self.command == "HEAD" or declared is not None else resp.read()
            entry.status = resp.status
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            # A HEAD answer has no body but the object's Content-Length.
            length = str(len(data)) if declared is None and self.command != "HEAD" else (declared or "0")
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self._send_body(resp, data, int(length), fault == "cut")
        finally:
            conn.close()

    def _send_body(self, resp: http.client.HTTPResponse, data: bytes, length: int, cut: bool) -> None:
        """Relay the body; with ``cut``, only its first half, then drop the connection."""
        stop = length // 2 if cut else length
        sent = 0
        try:
            if data:
                self.wfile.write(data[:stop])
                sent = min(stop, len(data))
            while sent < stop:
                chunk = resp.read(min(1 << 20, stop - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        except ConnectionError:  # the client stopped reading (rclone cancels its reads)
            self.close_connection = True
            return
        if cut:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: ProxyState


@contextmanager
def proxy(upstream: tuple[str, int]) -> Iterator[tuple[str, ProxyState]]:
    """A logging, fault-injecting HTTP proxy in front of ``upstream``: (endpoint URL, state)."""
    srv = _ProxyServer(("127.0.0.1", 0), _Handler)
    srv.state = ProxyState(upstream)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.state
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's S3 server on 127.0.0.1 (a free port), stopped on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield host, port
    finally:
        server.stop()


def aws_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The process environment with test credentials for ``endpoint`` and nothing from ~/.aws."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        QELTRIX_S3_RETRY_SECONDS="5",
    )
    env.update(extra)
    return env


@contextmanager
def s3_bucket(bucket: str) -> Iterator[tuple[str, ProxyState, Any, dict[str, str]]]:
    """moto behind the logging proxy, this process's AWS settings pointed at the proxy (any
    others removed until exit), ``bucket`` created, and a boto3 client straight to moto (for a
    test's own checks and "other writers", which bypass the proxy's log and faults):
    ``(endpoint, state, client, env)``, ``env`` for subprocesses."""
    import boto3

    with moto_server() as up, proxy(up) as (endpoint, state):
        env = aws_env(endpoint)
        ours = ("AWS_", "QELTRIX_S3_")
        saved = {k: v for k, v in os.environ.items() if k.startswith(ours)}
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith(ours)})
        try:
            client = boto3.client(
                "s3",
                endpoint_url=f"http://{up[0]}:{up[1]}",
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            client.create_bucket(Bucket=bucket)
            yield endpoint, state, client, env
        finally:
            for k in env:
                if k.startswith(ours):
                    os.environ.pop(k, None)
            os.environ.update(saved)
