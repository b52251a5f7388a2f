"""Members of archives for the SeekServer: ``GET /backup.qltx/docs/a.pdf`` (FORMAT.md section 16).

The archive is opened once per file version (one KDF run, one read of the member table); each
member is then served from a fresh ``_core.Reader`` of the same file, loaded with the archive's
keys (no KDF) and windowed to the member's bytes, so the HTTP loop treats it as a container of
its own: ranges, ``ETag`` (per member), caching.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import _core
from .archive import Archive, Member

FileVersion = tuple[int, int, int, int]


class MemberOpener:
    """``open_member(path, member)`` for the HTTP loop; ``open_archive(path)`` opens an
    :class:`Archive` with the server's credentials."""

    def __init__(
        self,
        open_archive: Callable[[str], Archive],
        block_cache: _core.BlockCache | None,
        signers: frozenset[bytes] | None,
        max_recent: int = 16,
    ) -> None:
        self._open_archive = open_archive
        self._block_cache = block_cache
        self._signers = signers
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[FileVersion, Any, dict[str, Member]]] = OrderedDict()
        self._max_recent = max_recent

    def _table(self, path: str) -> tuple[Any, dict[str, Member]]:
        st = os.stat(path)
        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._recent.get(path)
            if hit is not None and hit[0] == version:
                return hit[1], hit[2]
            with self._open_archive(path) as a:
                keys = a._opened.keys
                members = {m.path: m for m in a.members()}
            self._recent[path] = (version, keys, members)
            self._recent.move_to_end(path)
            while len(self._recent) > self._max_recent:
                self._recent.popitem(last=False)
            return keys, members

    def __call__(self, path: str, member: str) -> _core.Reader:
        from . import _signing

        keys, members = self._table(path)
        m = members.get(member)
        if m is None or m.type not in ("file", "hardlink"):
            raise FileNotFoundError(f"{path}: no file member {member!r}")
        with open(path, "rb", buffering=0) as f:
            reader = _core.Reader(f.fileno(), 8, self._block_cache)
        if bytes(reader.container_id) != bytes(keys.container_id):
            raise FileNotFoundError(f"{path}: replaced while it was being opened")
        keys.verify_header_mac(bytes(reader.header_maced), bytes(reader.header_mac))
        reader.load_index(keys)
        if self._signers:
            _signing.enforce(reader, self._signers)
        reader.set_window(m.offset, m.size)
        return reader
