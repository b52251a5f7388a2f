"""Pack reads a regular input file from wherever its descriptor stands, and what is there when
it gets to it: a file appended to meanwhile (a growing log) is packed with the appended bytes.
The append is made at a chosen block, from inside the pipeline, by wrapping the crypto layer's
per-frame call."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import KEY, make_plaintext, unpack_bytes
from qeltrix_v6 import _crypto

BLOCK = 64 * 1024


def _on_block(monkeypatch: pytest.MonkeyPatch, at: int, action: Callable[[], None]) -> None:
    """Run ``action`` once, just before block ``at`` is sealed (its plaintext already read)."""
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
