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


def _traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated through Python's allocators (the pipeline's buffers are bytearrays)
    while ``fn`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("size", [0, 1, 300_000])
def test_a_small_input_makes_only_the_buffers_it_needs(tmp_path: Path, size: int) -> None:
    """Pack's buffer pools (a permutation window of frames plus a few blocks, ~18 MiB at the
    default 256 KiB blocks) are made on first need, not up front: a small input costs a few
    blocks' worth of memory, and a pack of a few bytes is not a memset of the whole pool."""
    src = tmp_path / "in.bin"
    src.write_bytes(make_plaintext(size, seed="small"))
    peak = _traced_peak(lambda: qeltrix_v6.pack(str(src), os.devnull, key=KEY))
    block = 256 * 1024
    assert peak < 8 * block, f"{peak} bytes traced packing {size} bytes"


def test_a_large_input_stays_within_the_pools(tmp_path: Path) -> None:
    """Made on demand or not, the pools are bounded: a window of frames plus 2 x workers + 2
    blocks and as many frames, whatever the input size."""
    workers, window = 2, qeltrix_v6._core.default_perm_window(BLOCK)
    src = tmp_path / "in.bin"
    src.write_bytes(make_plaintext(12 * 1024 * 1024, seed="large"))
    peak = _traced_peak(lambda: qeltrix_v6.pack(str(src), os.devnull, key=KEY, block_size=BLOCK, workers=workers))
    bound = (2 * workers + 2) * BLOCK + (window + 2 * workers + 2) * (BLOCK + 1024)
    assert peak < bound + 2 * 1024 * 1024, f"{peak} bytes traced, pools allow {bound}"
    assert peak > (window // 2) * BLOCK, "a whole window of frames is held before it is written"
