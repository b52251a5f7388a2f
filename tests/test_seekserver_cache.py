"""The SeekServer's decrypted-block cache and decrypt-ahead (issue 10, "Speed per request").

Real servers on 127.0.0.1 and real HTTP clients (http.client, curl): cached blocks are served
byte for byte, the cache stays within its byte bound, a replaced container file is never
answered from the old file's plaintext, and long bodies decrypted one step ahead arrive
exactly (whole files, long single ranges, multipart ranges whose heads must come before
their data).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import http_request, running_cli

KEY = bytes(range(32))
BLOCK = 64 * 1024
DATA = os.urandom(3 * (1 << 20) + 12345)  # 49 blocks of 64 KiB, the last one short


def pack(path: Path, data: bytes) -> None:
    qeltrix_v6.pack(io.BytesIO(data), str(path), key=KEY, block_size=BLOCK)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    pack(tmp_path / "v.bin.qltx", DATA)
    return tmp_path


def get(server: qeltrix_v6.SeekServer, path: str, range_: str | None = None) -> tuple[int, bytes, str]:
    status, headers, body = http_request(server.address, path, {"Range": range_} if range_ else None, timeout=30)
    return status, body, headers.get("content-type", "")


def test_cached_blocks_are_byte_identical_and_the_cache_stays_bounded(root: Path) -> None:
    bound = 4 * BLOCK + 100  # room for four blocks
    rng = random.Random(10)
    with qeltrix_v6.SeekServer(root, key=KEY, block_cache=bound) as server:
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=30)
        # A player seeking around a few hot spots re-reads the same blocks; in between, reads
        # all over the file push other blocks through the cache.
        hot = [rng.randrange(0, len(DATA) - 5000) for _ in range(3)]
        for n in range(150):
            pos = rng.choice(hot) + rng.randrange(0, 4000) if n % 3 else rng.randrange(0, len(DATA) - 1)
            length = rng.randrange(1, 3 * BLOCK)
            end = min(pos + length, len(DATA)) - 1
            conn.request("GET", "/v.bin", headers={"Range": f"bytes={pos}-{end}"})
            r = conn.getresponse()
            assert r.status == 206
            assert r.read() == DATA[pos : end + 1], (pos, end)
            stats = server.block_cache_stats()
            assert stats["bytes"] <= bound, stats
        conn.close()
        stats = server.block_cache_stats()
        assert stats["max_bytes"] == bound
        assert stats["hits"] > 0 and stats["evictions"] > 0 and 0 < stats["entries"] <= 4, stats
        # The whole file, through a cache that holds a few blocks of it, is still exact.
        status, body, _ = get(server, "/v.bin")
        assert status == 200 and body == DATA
        assert server.block_cache_stats()["bytes"] <= bound


def test_a_cache_of_zero_bytes_caches_nothing(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, block_cache=0) as server:
        for _ in range(2):
            status, body, _ = get(server, "/v.bin", "bytes=70000-80000")
            assert status == 206 and body == DATA[70000:80001]
        stats = server.block_cache_stats()
        assert stats["entries"] == 0 and stats["bytes"] == 0 and stats["hits"] == 0


def test_a_replaced_container_is_never_served_from_the_old_plaintext(root: Path) -> None:
    new = bytes(b ^ 0x5A for b in DATA)  # same length, every byte different
    with qeltrix_v6.SeekServer(root, key=KEY) as server:
        for _ in range(2):  # the second read comes from the cache
            status, body, _ = get(server, "/v.bin", "bytes=100000-300000")
            assert status == 206 and body == DATA[100000:300001]
        assert server.block_cache_stats()["hits"] > 0
        # Replaced the way tools do it: a new file renamed over the old one.
        pack(root / "tmp.qltx.part", new)
        os.replace(root / "tmp.qltx.part", root / "v.bin.qltx")
        status, body, _ = get(server, "/v.bin", "bytes=100000-300000")
        assert status == 206 and body == new[100000:300001]
        status, body, _ = get(server, "/v.bin")
        assert status == 200 and body == new
        # And rewritten in place (same inode, same size, new mtime).
        pack(root / "again.qltx", DATA)
        ino = os.stat(root / "v.bin.qltx").st_ino
        with open(root / "v.bin.qltx", "r+b") as f:
            f.write((root / "again.qltx").read_bytes())
        st = os.stat(root / "v.bin.qltx")
        assert st.st_ino == ino
        os.utime(root / "v.bin.qltx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        status, body, _ = get(server, "/v.bin", "bytes=100000-300000")
        assert status == 206 and body == DATA[100000:300001]


def test_decrypt_ahead_bodies_are_exact(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, block_cache=0) as server:
        status, body, _ = get(server, "/v.bin")
        assert status == 200 and body == DATA
        # A long range starting and ending inside blocks.
        status, body, _ = get(server, "/v.bin", "bytes=12345-2999999")
        assert status == 206 and body == DATA[12345:3000000]
        # Multipart: each part spans many steps, and each part's head must come before its
        # data even though the next step is started ahead.
        status, body, ctype = get(server, "/v.bin", "bytes=1000-700000,1500000-2600000")
        assert status == 206
        boundary = re.search(r"boundary=(\S+)", ctype)
        assert boundary
        parts = [p for p in body.split(b"--" + boundary.group(1).encode()) if p.strip(b"\r\n-")]
        assert len(parts) == 2
        for part, (a, b) in zip(parts, [(1000, 700000), (1500000, 2600000)], strict=True):
            head, _, data = part.partition(b"\r\n\r\n")
            assert f"Content-Range: bytes {a}-{b}/{len(DATA)}".encode() in head
            assert data.removesuffix(b"\r\n") == DATA[a : b + 1]


@pytest.mark.parametrize("block_cache", [0, 8 * BLOCK])
def test_many_clients_reading_the_same_blocks_at_once_get_exact_bytes(root: Path, block_cache: int) -> None:
    # Concurrent readers of one block share a single decryption (the others wait for it);
    # each must still get exactly its own range, with or without the cache.
    ranges = [(1000 + 37 * n, 1000 + 37 * n + 3 * BLOCK) for n in range(24)]
    with qeltrix_v6.SeekServer(root, key=KEY, block_cache=block_cache) as server, ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda r: get(server, "/v.bin", f"bytes={r[0]}-{r[1]}"), ranges * 2))
    for (a, b), (status, body, _) in zip(ranges * 2, got, strict=True):
        assert status == 206 and body == DATA[a : b + 1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_cli_block_cache_option(root: Path) -> None:
    key_file = root / "k.key"
    key_file.write_bytes(KEY)
    with running_cli(
        "serve",
        "--key-file",
        str(key_file),
        "--port",
        "0",
        "--block-cache",
        "1MiB",
        str(root),
        ready=r"on (http://\S+)",
    ) as (_, m, _):
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "60", m.group(1) + "/v.bin"], capture_output=True, check=True, timeout=90
        ).stdout
        assert hashlib.sha256(out).digest() == hashlib.sha256(DATA).digest()
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "serve", "--key-file", str(key_file), "--block-cache", "lots", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "not a size" in r.stderr and "Traceback" not in r.stderr


def test_block_cache_must_not_be_negative(root: Path) -> None:
    with pytest.raises(ValueError, match="block_cache"):
        qeltrix_v6.SeekServer(root, key=KEY, block_cache=-1)


@pytest.fixture(autouse=True)
def _no_leftovers(root: Path) -> Iterator[None]:
    yield
    assert not list(root.glob("*.part"))
