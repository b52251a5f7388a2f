"""Clients that stop reading must not freeze the SeekServer (issue 10, item 2).

Real sockets on 127.0.0.1: many clients ask for a large body and never read it, another
client must still get its full, correct body. The only timing is a generous liveness bound:
the client socket's timeout.
"""

from __future__ import annotations

import http.client
import io
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import http_request

KEY = bytes(range(32))
DATA = os.urandom(8 << 20)
STALLED = 600
# Liveness only: before the fix the other client waited for the 60 s idle timeout.
LIVENESS_S = 30.0


@pytest.fixture(scope="module", autouse=True)
def _enough_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * STALLED + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("stall")
    qeltrix_v6.pack(io.BytesIO(DATA), r / "big.bin.qltx", key=KEY, block_size=64 * 1024)
    return r


def stalled(server: qeltrix_v6.SeekServer, path: str = "/big.bin") -> socket.socket:
    """A client that asks for the whole body and never reads it (a small receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(server.address)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def still_connected(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return len(s.recv(1, socket.MSG_PEEK)) == 1
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)


def fetch(server: qeltrix_v6.SeekServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, _, body = http_request(server.address, path, headers, timeout=LIVENESS_S)
    return status, body


def test_600_stalled_readers_do_not_block_another_client(root: Path) -> None:
    # Every test client is 127.0.0.1: lift the per-client limit to stand for 600 clients.
    with qeltrix_v6.SeekServer(root, key=KEY, max_connections_per_client=STALLED + 16) as server:
        stuck = [stalled(server) for _ in range(STALLED)]
        try:
            # Every stalled client has its response started (the server filled its buffers).
            for s in stuck:
                s.settimeout(LIVENESS_S)
                assert s.recv(1, socket.MSG_PEEK)
            # Each of these would time out (LIVENESS_S per socket operation) if it had to wait
            # for a blocking thread that a stalled response holds.
            assert fetch(server, "/big.bin", {"Range": "bytes=100-2000099"}) == (206, DATA[100:2000100])
            assert fetch(server, "/big.bin") == (200, DATA)
            assert fetch(server, "/missing.bin")[0] == 404
            assert all(still_connected(s) for s in stuck)
        finally:
            for s in stuck:
                s.close()


def test_trickle_reader_does_not_block_others(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY) as server:
        trickle = stalled(server)
        try:
            for _ in range(10):
                assert trickle.recv(16)
                time.sleep(0.05)
            assert fetch(server, "/big.bin", {"Range": "bytes=5000000-"}) == (206, DATA[5_000_000:])
            assert trickle.recv(16)
        finally:
            trickle.close()


def test_per_client_limit_refuses_the_excess(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, max_connections_per_client=4) as server:
        held = [stalled(server) for _ in range(4)]
        try:
            time.sleep(0.3)
            extra = socket.create_connection(server.address, timeout=LIVENESS_S)
            extra.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                assert extra.recv(1) == b""  # closed without an answer
            except ConnectionResetError:
                pass
            finally:
                extra.close()
        finally:
            for s in held:
                s.close()
        # The slots free up when those clients leave.
        deadline = time.monotonic() + LIVENESS_S
        while True:
            try:
                if fetch(server, "/big.bin", {"Range": "bytes=0-99"}) == (206, DATA[:100]):
                    break
            except (ConnectionError, http.client.HTTPException):
                pass
            assert time.monotonic() < deadline, "never served after the other connections closed"
            time.sleep(0.1)


def test_stalled_reader_is_dropped_after_idle_timeout(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, idle_timeout=0.5) as server:
        s = stalled(server)
        try:
            time.sleep(2.5)
            s.settimeout(LIVENESS_S)
            got = 0
            while chunk := s.recv(1 << 16):
                got += len(chunk)
            assert got < len(DATA), "the stalled response was kept instead of dropped"
        except ConnectionResetError:
            pass
        finally:
            s.close()
