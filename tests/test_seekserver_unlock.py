"""The SeekServer unlocks each container once (issue 10, item 1).

Opening under a passphrase runs Argon2id. Concurrent first requests for one container share one
open; a container the server's passphrase does not open costs one KDF run, not one per request;
both results are forgotten when the file changes. The opens are counted by a subclass that
wraps the server's real open (a spy on real work, over real HTTP).
"""

from __future__ import annotations

import io
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import qeltrix_v6
from qeltrix_v6 import _core

PW = "correct horse battery staple"
KDF = {"kdf": "pbkdf2", "kdf_params": {"iterations": 1000}}


class CountingServer(qeltrix_v6.SeekServer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.opens: list[str] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _open_container(self, path: str) -> _core.Reader:
        self.opens.append(os.path.basename(path))
        return super()._open_container(path)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_a_container_the_passphrase_does_not_open_costs_one_open_until_it_changes(tmp_path: Path) -> None:
    c = tmp_path / "other.bin.qltx"
    qeltrix_v6.pack(io.BytesIO(b"x" * 1000), c, passphrase="another passphrase", **KDF)
    with CountingServer(tmp_path, passphrase=PW) as server:
        codes = [status(f"{server.url}/other.bin") for _ in range(5)]
        threads = [threading.Thread(target=status, args=(f"{server.url}/other.bin",)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert codes == [403] * 5
        assert server.opens == ["other.bin.qltx"]
        # The file changes (re-packed for the server's passphrase): opened afresh, and served.
        qeltrix_v6.pack(io.BytesIO(b"y" * 1000), c, passphrase=PW, overwrite=True, **KDF)
        with urllib.request.urlopen(f"{server.url}/other.bin", timeout=60) as r:
            assert r.read() == b"y" * 1000
        assert server.opens == ["other.bin.qltx"] * 2


def test_concurrent_first_requests_share_one_open(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    qeltrix_v6.pack(io.BytesIO(data), tmp_path / "v.bin.qltx", passphrase=PW)  # default Argon2id
    got: list[bytes] = []
    with CountingServer(tmp_path, passphrase=PW) as server:

        def get() -> None:
            with urllib.request.urlopen(f"{server.url}/v.bin", timeout=100) as r:
                got.append(r.read())

        threads = [threading.Thread(target=get, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert got == [data] * 6
        assert server.opens == ["v.bin.qltx"]
