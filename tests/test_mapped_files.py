"""Pack reads a regular input file through mappings (issue 16): the same container as reading
it, from any offset, and a clear error, never a crash (SIGBUS), when another process truncates
the file meanwhile. The truncation (or append) is made at a chosen block, from inside the
pipeline, by wrapping the crypto layer's per-frame call."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import KEY, make_plaintext, unpack_bytes
from qeltrix_v6 import _crypto

BLOCK = 64 * 1024


def _on_block(monkeypatch: pytest.MonkeyPatch, at: int, action: Callable[[], None]) -> None:
    """Run ``action`` once, just before block ``at`` is sealed (its plaintext already mapped)."""
    seal = _crypto.ContainerKeys.seal_stream_frame
    done = []

    def wrapped(self: Any, block_index: int, *args: Any) -> None:
        if block_index == at and not done:
            done.append(True)
            action()
        seal(self, block_index, *args)

    monkeypatch.setattr(_crypto.ContainerKeys, "seal_stream_frame", wrapped)


@pytest.mark.parametrize("size", [BLOCK, 3 * BLOCK, 40 * BLOCK + 17, 5_000_000])
@pytest.mark.parametrize("start", [0, 1000, 4096])
def test_a_file_from_any_offset_packs_what_is_there(tmp_path: Path, size: int, start: int) -> None:
    pt = make_plaintext(size, seed=f"map{size}")
    src = tmp_path / "in.bin"
    src.write_bytes(pt)
    out = io.BytesIO()
    fd = os.open(src, os.O_RDONLY)
    try:
        os.lseek(fd, start, os.SEEK_SET)
        qeltrix_v6.pack(fd, out, key=KEY, block_size=BLOCK)
        # The descriptor ends where reading it would have left it.
        assert os.lseek(fd, 0, os.SEEK_CUR) == size
    finally:
        os.close(fd)
    assert unpack_bytes(out.getvalue()) == pt[start:]


def test_truncated_during_pack_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "in.bin", tmp_path / "out.qltx"
    src.write_bytes(make_plaintext(40 * BLOCK, seed="shrink"))
    _on_block(monkeypatch, 3, lambda: os.truncate(src, BLOCK))
    with pytest.raises(qeltrix_v6.QeltrixIOError, match="shrank while it was being packed"):
        qeltrix_v6.pack(src, dst, key=KEY, block_size=BLOCK)
    assert sorted(os.listdir(tmp_path)) == ["in.bin"]  # no output, not even a temporary one


def test_appended_during_pack_is_packed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As when the file is read: what is there when the packer gets to it (a growing log).
    pt, more = make_plaintext(40 * BLOCK + 5, seed="grow"), make_plaintext(3 * BLOCK, seed="more")
    src = tmp_path / "in.bin"
    src.write_bytes(pt)

    def append() -> None:
        with open(src, "ab") as f:
            f.write(more)

    _on_block(monkeypatch, 2, append)
    out = io.BytesIO()
    qeltrix_v6.pack(src, out, key=KEY, block_size=BLOCK)
    assert unpack_bytes(out.getvalue()) == pt + more


_CLI_TRUNCATING = """
import os, sys
from qeltrix_v6 import _crypto
src = sys.argv[1]
seal = _crypto.ContainerKeys.seal_stream_frame
def wrapped(self, block_index, *args):
    if block_index == 3:
        os.truncate(src, 0)
    seal(self, block_index, *args)
_crypto.ContainerKeys.seal_stream_frame = wrapped
sys.argv = ["qeltrix", "pack", "--key-file", sys.argv[2], "--block-size", "64KiB", src, sys.argv[3]]
from qeltrix_v6.cli import main
main()
"""


def test_cli_truncated_during_pack_is_one_line_and_exit_code_6(tmp_path: Path) -> None:
    src, key, dst = tmp_path / "in.bin", tmp_path / "k", tmp_path / "out.qltx"
    src.write_bytes(make_plaintext(40 * BLOCK, seed="cli-shrink"))
    key.write_bytes(KEY)
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_TRUNCATING, str(src), str(key), str(dst)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.splitlines() == [
        "qeltrix: error: I/O error: the input file shrank while it was being packed (truncated by another process?)"
    ]
    assert not dst.exists()
