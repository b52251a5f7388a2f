"""The Quick start's sample job: pack a generated file, then read a range out of its middle."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable

from ._container import pack, seek_extract

DEMO_SIZE = 64 << 20


def run_demo(size: int = DEMO_SIZE, say: Callable[[str], object] = print) -> bool:
    """Generate ``size`` random bytes, pack them, read 64 KiB from the middle, compare.

    Returns True when the range read back equals the original bytes.
    """
    key = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="qeltrix-demo-") as tmp:
        src = os.path.join(tmp, "sample.bin")
        dst = os.path.join(tmp, "sample.bin.qltx")
        data = os.urandom(size)
        with open(src, "wb") as f:
            f.write(data)
        say(f"generated {src} ({size:,} random bytes)")
        t0 = time.perf_counter()
        result = pack(src, dst, key=key)
        dt = time.perf_counter() - t0
        say(
            f"packed into {dst}: {result.block_count} blocks, {result.container_len:,} bytes "
            f"in {dt * 1000:.0f} ms ({size / dt / 1e9:.2f} GB/s)"
        )
        offset, length = size // 2 - 12345, 64 << 10
        t0 = time.perf_counter()
        part = seek_extract(dst, offset, length, key=key)
        dt = time.perf_counter() - t0
        ok = part == data[offset : offset + length]
        say(
            f"read {len(part):,} bytes at offset {offset:,} in {dt * 1000:.2f} ms "
            f"(sha256 {hashlib.sha256(part).hexdigest()[:16]}...): {'matches' if ok else 'DOES NOT MATCH'} the original"
        )
    return ok
