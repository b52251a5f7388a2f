"""``qeltrix mount s3://BUCKET/PREFIX MOUNTPOINT``: the read-only FUSE tree over containers on a
real S3 server (moto, behind the logging proxy of tests/s3util.py), read with ordinary file
calls through the kernel."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY, make_plaintext, running_cli
from s3util import ProxyState, s3_bucket
from test_mount import _fuse_or_skip, _unmount

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "qltx-mount"
BLOCK = 64 << 10
PLAIN = {"a.bin": make_plaintext(5 * BLOCK + 123, "a"), "sub/deep/b.bin": make_plaintext(300_000, "b")}


@pytest.fixture(scope="module")
def s3() -> Iterator[ProxyState]:
    """Containers at s3://qltx-mount/data/{a.bin,sub/deep/b.bin}.qltx, a non-container beside
    them and an object outside the prefix; the proxy's request log."""
    _fuse_or_skip()
    with s3_bucket(BUCKET) as (_, state, client, _env):
        for name, data in PLAIN.items():
            qeltrix_v6.pack(io.BytesIO(data), f"s3://{BUCKET}/data/{name}.qltx", key=KEY, block_size=BLOCK)
        client.put_object(Bucket=BUCKET, Key="data/README.txt", Body=b"not a container")
        client.put_object(Bucket=BUCKET, Key="elsewhere.qltx", Body=b"outside the prefix")
        yield state


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "k.key").write_bytes(KEY)
    return tmp_path / "k.key"


def test_names_sizes_random_preads_and_only_ranged_gets(s3: ProxyState, keyfile: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    args = ("mount", "--key-file", str(keyfile), f"s3://{BUCKET}/data/", str(mnt), "--foreground")
    try:
        with running_cli(*args, ready=r"mounted "):
            assert sorted(os.listdir(mnt)) == ["a.bin", "sub"]  # .qltx stripped, others hidden
            assert os.listdir(mnt / "sub") == ["deep"]
            assert os.listdir(mnt / "sub" / "deep") == ["b.bin"]
            before = len(s3.gets("data/a.bin.qltx"))  # the key check before mounting opened it
            for name, data in PLAIN.items():
                st = os.stat(mnt / name)
                assert st.st_size == len(data) and not st.st_mode & 0o222
            gets = len(s3.gets("data/a.bin.qltx"))
            assert gets - before == 2  # the size cost one open: the header and the index
            for _ in range(3):  # later lookups reuse the size kept by key and ETag
                assert os.stat(mnt / "a.bin").st_size == len(PLAIN["a.bin"])
            assert len(s3.gets("data/a.bin.qltx")) == gets
            with pytest.raises(FileNotFoundError):
                os.stat(mnt / "a.bin.qltx")
            with pytest.raises(FileNotFoundError):
                os.stat(mnt / "elsewhere")
            data = PLAIN["a.bin"]
            rng = random.Random(7)
            fd = os.open(mnt / "a.bin", os.O_RDONLY)
            try:
                for _ in range(30):
                    off = rng.randrange(len(data) + 10)
                    n = rng.choice([1, 100, 4096, BLOCK, 3 * BLOCK])
                    assert os.pread(fd, n, off) == data[off : off + n]
            finally:
                os.close(fd)
            assert (mnt / "sub" / "deep" / "b.bin").read_bytes() == PLAIN["sub/deep/b.bin"]
    finally:
        _unmount(mnt)
    for key in ("data/a.bin.qltx", "data/sub/deep/b.bin.qltx"):
        gets = s3.gets(key)
        assert gets, key
        assert all(g.headers.get("range", "").startswith("bytes=") for g in gets), [g.headers for g in gets]
        assert all("if-match" in g.headers for g in gets[1:] if g.headers.get("range") != "bytes=0-65535")
    assert not s3.gets("elsewhere.qltx")


def test_sigterm_unmounts_and_exits_0(s3: ProxyState, keyfile: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qeltrix_v6", "mount", "-k", str(keyfile), f"s3://{BUCKET}/data", str(mnt), "-F"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (mnt / "a.bin").read_bytes()[:10] == PLAIN["a.bin"][:10]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else b""
        assert not os.path.ismount(mnt)
    finally:
        _unmount(mnt)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wrong_key_and_missing_bucket_are_one_line_errors(s3: ProxyState, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "wrong.key").write_bytes(bytes(32))
    cli = [sys.executable, "-m", "qeltrix_v6", "mount", "-k", str(tmp_path / "wrong.key")]
    for src in (f"s3://{BUCKET}/data", "s3://no-such-bucket/x"):
        out = subprocess.run([*cli, src, str(tmp_path / "mnt")], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and out.stderr.startswith("qeltrix: error:"), out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr
        assert not os.path.ismount(tmp_path / "mnt")
