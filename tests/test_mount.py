"""``qeltrix mount``: a read-only FUSE view of a directory of containers, driven through the
kernel with ordinary file calls (os.pread, os.listdir), unmounted by fusermount3 and signals."""

from __future__ import annotations

import errno
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
from conftest import KEY, make_plaintext, require, running_cli

BLOCK = 64 << 10


def _fuse_or_skip() -> str:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("FUSE is not available: /dev/fuse is missing (a container without --device /dev/fuse)")
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"mfusepy or libfuse 3 is missing: {e}")
    return require("fusermount3")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """SRC with a.bin.qltx, sub/b.bin.qltx and a non-container; an empty mount point; a key file."""
    _fuse_or_skip()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    plain = {"a.bin": make_plaintext(5 * BLOCK + 123, "a"), "sub/b.bin": make_plaintext(300_000, "b")}
    for name, data in plain.items():
        (tmp_path / "p").write_bytes(data)
        qeltrix_v6.pack(str(tmp_path / "p"), str(src / f"{name}.qltx"), key=KEY, block_size=BLOCK)
    (src / "README.txt").write_text("not a container")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "k.key").write_bytes(KEY)
    return src, tmp_path / "mnt", plain


def _unmount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


@pytest.fixture
def mounted(tree: tuple[Path, Path, dict[str, bytes]], tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, bytes]]]:
    src, mnt, plain = tree
    args = ("mount", "--key-file", str(tmp_path / "k.key"), str(src), str(mnt), "--foreground")
    try:
        with running_cli(*args, ready=r"mounted "):
            yield src, mnt, plain
    finally:
        _unmount(mnt)


def test_names_sizes_and_random_preads(mounted: tuple[Path, Path, dict[str, bytes]]) -> None:
    _, mnt, plain = mounted
    assert sorted(os.listdir(mnt)) == ["a.bin", "sub"]  # .qltx stripped, non-containers hidden
    assert os.listdir(mnt / "sub") == ["b.bin"]
    for name, data in plain.items():
        st = os.stat(mnt / name)
        assert st.st_size == len(data) and not st.st_mode & 0o222
    rng = random.Random(5)
    data = plain["a.bin"]
    fd = os.open(mnt / "a.bin", os.O_RDONLY)
    try:
        for _ in range(40):
            off = rng.randrange(len(data) + 10)
            n = rng.choice([1, 100, 4096, BLOCK, 3 * BLOCK])
            assert os.pread(fd, n, off) == data[off : off + n]
    finally:
        os.close(fd)
    assert (mnt / "sub" / "b.bin").read_bytes() == plain["sub/b.bin"]
    with pytest.raises(OSError) as e:
        os.open(mnt / "a.bin", os.O_WRONLY)
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "a.bin.qltx")


def test_mount_options_without_and_with_allow_other(
    mounted: tuple[Path, Path, dict[str, bytes]], tree: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    _, mnt, _ = mounted
    line = next(x for x in Path("/proc/self/mounts").read_text().splitlines() if f" {mnt} " in x)
    assert "fuse.qeltrix" in line and " ro," in line and "allow_other" not in line
    (tmp_path / "mnt2").mkdir()
    args = (
        "mount",
        "-k",
        str(tmp_path / "k.key"),
        str(tmp_path / "src"),
        str(tmp_path / "mnt2"),
        "-F",
        "--allow-other",
    )
    try:
        with running_cli(*args, ready=r"mounted "):
            line = next(x for x in Path("/proc/self/mounts").read_text().splitlines() if f" {tmp_path}/mnt2 " in x)
            assert "allow_other" in line
    finally:
        _unmount(tmp_path / "mnt2")


def test_tampered_block_gives_eio_only_to_reads_that_touch_it(
    tree: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    src, mnt, plain = tree
    with qeltrix_v6.open(str(src / "a.bin.qltx"), key=KEY) as f:
        frame_offset = f._opened.reader.block_info(2)[2]
    raw = bytearray((src / "a.bin.qltx").read_bytes())
    raw[frame_offset + 100] ^= 0x40
    (src / "a.bin.qltx").write_bytes(raw)
    data = plain["a.bin"]
    args = ("mount", "--key-file", str(tmp_path / "k.key"), str(src), str(mnt), "--foreground")
    try:
        with running_cli(*args, ready=r"mounted ") as (_, _, lines):
            fd = os.open(mnt / "a.bin", os.O_RDONLY)
            try:
                assert os.pread(fd, BLOCK, 0) == data[:BLOCK]
                assert os.pread(fd, 2 * BLOCK, 3 * BLOCK) == data[3 * BLOCK : 5 * BLOCK]
                assert os.pread(fd, 10, 2 * BLOCK - 10) == data[2 * BLOCK - 10 : 2 * BLOCK]
                for off, n in ((2 * BLOCK, 1), (2 * BLOCK - 5, 10), (BLOCK, 3 * BLOCK)):
                    with pytest.raises(OSError) as e:
                        os.pread(fd, n, off)
                    assert e.value.errno == errno.EIO
                assert os.pread(fd, 100, 3 * BLOCK) == data[3 * BLOCK : 3 * BLOCK + 100]  # still fine after
            finally:
                os.close(fd)
            assert (mnt / "sub" / "b.bin").read_bytes() == plain["sub/b.bin"]
        assert sum("failed authentication" in line for line in lines) >= 3, lines
    finally:
        _unmount(mnt)


def _start_foreground(tmp_path: Path, src: Path, mnt: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qeltrix_v6", "mount", "-k", str(tmp_path / "k.key"), str(src), str(mnt), "-F"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3"])
def test_unmounts_cleanly(tree: tuple[Path, Path, dict[str, bytes]], tmp_path: Path, how: str) -> None:
    src, mnt, plain = tree
    proc = _start_foreground(tmp_path, src, mnt)
    try:
        assert (mnt / "a.bin").read_bytes()[:10] == plain["a.bin"][:10]
        if how == "fusermount3":
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        else:
            proc.send_signal(getattr(signal, how))
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else b""
        assert not os.path.ismount(mnt)
        assert os.listdir(mnt) == []
    finally:
        _unmount(mnt)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_background_mount_and_errors(tree: tuple[Path, Path, dict[str, bytes]], tmp_path: Path) -> None:
    src, mnt, plain = tree
    cli = [sys.executable, "-m", "qeltrix_v6", "mount"]
    out = subprocess.run([*cli, "-k", str(tmp_path / "k.key"), str(src), str(mnt)], capture_output=True, text=True)
    try:
        assert out.returncode == 0, out.stderr
        assert "fusermount3 -u" in out.stderr
        assert (mnt / "a.bin").read_bytes() == plain["a.bin"]
    finally:
        _unmount(mnt)
    deadline = time.monotonic() + 10
    while os.path.ismount(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "wrong.key").write_bytes(bytes(32))
    out = subprocess.run([*cli, "-k", str(tmp_path / "wrong.key"), str(src), str(mnt)], capture_output=True, text=True)
    assert out.returncode == 3 and out.stderr.startswith("qeltrix: error:") and "Traceback" not in out.stderr
    assert not os.path.ismount(mnt)
    out = subprocess.run([*cli, "-k", str(tmp_path / "k.key"), str(src), str(src)], capture_output=True, text=True)
    assert out.returncode == 6 and "not an empty directory" in out.stderr
