"""Concurrent opens under a passphrase never hang (issue 10, item 1).

Two Argon2id derivations with lanes > 1 running at once in one process hang each other for
good with cryptography 50's bundled OpenSSL; the product's default has 4 lanes, and a server
or any threaded caller opens containers concurrently. These tests open several containers at
once, from the API and through a SeekServer with real HTTP clients, and check every one of them
finishes (a liveness check with a generous bound, not a timing assertion).
"""

from __future__ import annotations

import io
import threading
import urllib.request
from pathlib import Path

import qeltrix_v6

PW = "correct horse battery staple"
N = 4


def _containers(root: Path) -> list[bytes]:
    datas = []
    for i in range(N):
        data = f"container {i} ".encode() * 1000
        qeltrix_v6.pack(io.BytesIO(data), root / f"c{i}.bin.qltx", passphrase=PW)  # default Argon2id: 4 lanes
        datas.append(data)
    return datas


def _run_all(jobs: list[threading.Thread]) -> None:
    for t in jobs:
        t.start()
    for t in jobs:
        t.join(120)
    hung = [t.name for t in jobs if t.is_alive()]
    assert not hung, f"opens that never finished (Argon2id deadlock): {hung}"


def test_concurrent_api_opens_under_a_passphrase_all_finish(tmp_path: Path) -> None:
    datas = _containers(tmp_path)
    got: dict[int, bytes] = {}

    def read(i: int) -> None:
        got[i] = qeltrix_v6.seek_extract(tmp_path / f"c{i}.bin.qltx", 0, 1 << 20, passphrase=PW)

    _run_all([threading.Thread(target=read, args=(i,), name=f"open-{i}", daemon=True) for i in range(N)])
    assert got == dict(enumerate(datas))


def test_concurrent_first_requests_to_a_seekserver_under_a_passphrase(tmp_path: Path) -> None:
    """Two <video> elements on one page: concurrent GETs of containers not opened yet."""
    datas = _containers(tmp_path)
    got: dict[int, bytes] = {}
    with qeltrix_v6.SeekServer(tmp_path, passphrase=PW) as server:

        def get(i: int) -> None:
            with urllib.request.urlopen(f"{server.url}/c{i}.bin", timeout=100) as r:
                got[i] = r.read()

        _run_all([threading.Thread(target=get, args=(i,), name=f"get-{i}", daemon=True) for i in range(N)])
        # ...and the server still opens containers afterwards (no lasting MemoryError).
        with urllib.request.urlopen(f"{server.url}/c0.bin", timeout=100) as r:
            assert r.read() == datas[0]
    assert got == dict(enumerate(datas))
