"""Unlocked container keys, kept by header: one KDF per container for readers that open many
containers many times (the ``qltx`` fsspec file system, ``qeltrix mount``)."""

from __future__ import annotations

import collections
import threading
from typing import IO, Any

from . import _core, _crypto
from ._container import _Opened, unlock_header

_KEYS_CACHED = 1024


class KeyRing:
    """Credentials (``passphrase``/``key``/``identity``/``kms``/``max_kdf_memory``, as
    :func:`qeltrix_v6.open` takes them) and the keys of the containers they have opened.

    A header seen before (the same bytes: salt, stanzas and header MAC) is not unlocked
    again; a different header, even one that differs in a single byte, is."""

    def __init__(self, credentials: dict[str, Any], cache_blocks: int = 8) -> None:
        self.credentials = {k: v for k, v in credentials.items() if v is not None}
        self.cache_blocks = min(max(int(cache_blocks), 0), 4096)
        self._keys: collections.OrderedDict[bytes, _crypto.ContainerKeys] = collections.OrderedDict()
        self._lock = threading.Lock()

    def unlock(self, reader: _core.Reader) -> _crypto.ContainerKeys:
        header = bytes(reader.header_bytes)
        with self._lock:
            keys = self._keys.get(header)
            if keys is not None:
                self._keys.move_to_end(header)
                return keys
        keys = unlock_header(reader.header, **self.credentials)
        with self._lock:
            self._keys[header] = keys
            while len(self._keys) > _KEYS_CACHED:
                self._keys.popitem(last=False)
        return keys

    def open(
        self, src: int | IO[bytes] | _core.StoreObject, owned: list[IO[bytes]], name: str | None = None
    ) -> _Opened:
        """Open the container in ``src`` (a file descriptor, a seekable file object or an
        opened ``s3://`` object);
        ``owned`` are closed with it (and now, on failure)."""
        try:
            reader = _core.Reader(src, self.cache_blocks)
            keys = self.unlock(reader)
            reader.load_index(keys)
        except BaseException:
            for f in owned:
                f.close()
            raise
        return _Opened(reader, keys, owned, name=name)
