"""``qltx``: an fsspec file system that reads and writes containers in place on another one.

Registered through the ``fsspec.specs`` entry point, so that pandas, pyarrow, DuckDB and Dask
read encrypted data with nothing imported first::

    pd.read_parquet("qltx::file:///data/t.parquet.qltx", storage_options={"qltx": {"key_file": "k"}})

Paths name the container objects as stored (``t.parquet.qltx``); :meth:`QeltrixFileSystem.info`
and ``ls`` report the plaintext size, and only ``.qltx`` objects (and directories) are listed.
A file opened ``"rb"`` is seekable: each read fetches, from the file system underneath, the
frames of the blocks that cover it and nothing more (the reader keeps a few decrypted blocks
for reuse). ``"wb"`` packs what is written, streaming, with bounded memory.

Credentials are storage options that name files (``key_file``, ``passphrase_file``,
``identity_file``) or ``$QELTRIX_PASSPHRASE``: never a secret in a URL. ``recipients`` (public
keys) lets a writer pack for others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import IO, Any, ClassVar, cast

import fsspec
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.implementations.local import LocalFileSystem

from . import _crypto, _pubkeys
from ._container import ContainerFile, ContainerWriter, _Opened
from ._keyring import KeyRing
from .errors import MalformedError

PASSPHRASE_ENV = "QELTRIX_PASSPHRASE"
_FRAME_SLACK = 256  # more than a frame's own bytes beside its plaintext (metadata, nonce, tag)
SUFFIX = ".qltx"


def _read_secret_file(path: str, what: str, limit: int = 1 << 16) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read(limit)
    except OSError as e:
        raise ValueError(f"qltx: {what} {path}: {e.strerror}") from None


def load_credentials(
    key_file: str | None = None,
    passphrase_file: str | None = None,
    identity_file: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """``passphrase``/``key``/``identity`` keyword arguments of the container API, from files
    and then ``$QELTRIX_PASSPHRASE``; a ``ValueError`` that names what is wrong otherwise."""
    out: dict[str, Any] = {}
    if key_file is not None:
        key = _read_secret_file(key_file, "key file", _crypto.KEY_LEN + 1)
        if len(key) != _crypto.KEY_LEN:
            raise ValueError(f"qltx: key file {key_file} does not hold exactly {_crypto.KEY_LEN} raw bytes")
        out["key"] = key
    if passphrase_file is not None:
        line = _read_secret_file(passphrase_file, "passphrase file").split(b"\n", 1)[0].removesuffix(b"\r")
        if not line:
            raise ValueError(f"qltx: passphrase file {passphrase_file} is empty (or its first line is)")
        out["passphrase"] = line.decode("utf-8", "strict")
    if identity_file is not None:
        files = [identity_file] if isinstance(identity_file, str) else list(identity_file)
        identities = []
        for p in files:
            data = _read_secret_file(p, "identity file")
            try:
                _crypto.Identity(data)
            except MalformedError as e:
                raise ValueError(f"qltx: identity file {p}: {e}") from None
            identities.append(data)
        out["identity"] = identities
    if "passphrase" not in out and os.environ.get(PASSPHRASE_ENV):
        out["passphrase"] = os.environ[PASSPHRASE_ENV]
    return out


class QeltrixFile(ContainerFile):
    """A container opened through :class:`QeltrixFileSystem`: the plaintext, seekable."""

    def __init__(self, opened: _Opened, fs: QeltrixFileSystem, path: str, fd: int | None = None) -> None:
        super().__init__(opened, name=path)
        self.fs = fs
        self.path = path
        self.mode = "rb"
        self._fd = fd
        self._block = max(1, int(opened.reader.block_size))

    def _prefetch(self, pos: int, size: int) -> None:
        """Ask the kernel to start reading the frames of a multi-block read of a local file
        (exactly those frames: no read-ahead past what was asked), so the disk works while
        the first blocks decrypt."""
        reader = self._opened.reader
        first, last = pos // self._block, min(pos + size - 1, self.size - 1) // self._block
        if self._fd is None or last - first < 2:
            return
        for i in range(first, min(last, reader.block_count - 1) + 1):
            _, pt_len, frame_offset = reader.block_info(i)
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, frame_offset, pt_len + _FRAME_SLACK, os.POSIX_FADV_WILLNEED)

    def read(self, size: int | None = -1) -> bytes:
        """The reader's bytes as they are (``RawIOBase.read`` would copy them twice more)."""
        if size is None or size < 0:
            return self.readall()
        self._checkClosed()
        self._opened.check_end(self._pos, size)
        self._prefetch(self._pos, size)
        data: bytes = self._opened.reader.read_at(min(self._pos, (1 << 64) - 1), size)
        self._pos += len(data)
        return data


class _PackingFile(ContainerWriter):
    """``"wb"`` on a non-local target: packs into the target's writer, then closes it."""

    def __init__(self, target: IO[bytes], pack_kwargs: dict[str, Any], path: str) -> None:
        self._target = target
        super().__init__(target, pack_kwargs, name=path)
        self.path = path
        self.mode = "wb"

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        except BaseException:
            self._discard()
            raise
        self._target.close()

    def abort(self) -> None:
        if self.closed:
            return
        super().abort()
        self._discard()

    def _discard(self) -> None:
        discard = getattr(self._target, "discard", None)  # multipart uploads: abort, nothing written
        if callable(discard):
            discard()
        else:
            self._target.close()


class QeltrixFileSystem(ChainedFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """Containers on another fsspec file system (``target_protocol``/``target_options``, or
    ``fs``), read and written as their plaintext.

    Storage options: ``key_file``, ``passphrase_file``, ``identity_file`` (one path or a
    list), ``recipients`` (public keys to pack for), ``cache_blocks`` (decrypted blocks kept
    per open file, default 8) and ``pack_options`` (other :func:`qeltrix_v6.pack` options).
    """

    protocol: ClassVar[str] = "qltx"
    root_marker = ""

    def __init__(
        self,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: fsspec.AbstractFileSystem | None = None,
        key_file: str | None = None,
        passphrase_file: str | None = None,
        identity_file: str | Sequence[str] | None = None,
        recipients: Sequence[str] | None = None,
        cache_blocks: int = 8,
        pack_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("fo", None)  # the chained path; fsspec passes it to the outer file system
        super().__init__(**kwargs)
        if fs is None:
            fs = fsspec.filesystem(target_protocol or "file", **(target_options or {}))
        self.fs = fs
        self._credentials = load_credentials(key_file, passphrase_file, identity_file)
        self._recipients = list(recipients or [])
        if not self._credentials and not self._recipients:
            raise ValueError(
                "qltx: no credentials: give the storage option key_file, passphrase_file or identity_file "
                f"(or recipients, to write), or set ${PASSPHRASE_ENV}"
            )
        _pubkeys.parse_recipients(self._recipients)  # refuse a bad key now, not at the first write
        self._keyring = KeyRing(self._credentials, cache_blocks)
        self._pack_options = dict(pack_options or {})
        self._sizes: dict[tuple[str, int, Any], int] = {}

    # --- paths ---------------------------------------------------------------------------

    def _target_path(self, path: str) -> str:
        return cast(str, self.fs._strip_protocol(self._strip_protocol(path)))

    # --- reading -------------------------------------------------------------------------

    def _open_container(self, tpath: str) -> tuple[_Opened, int | None]:
        """The opened container, and the descriptor its reader preads when it is a local file."""
        if not self._keyring.credentials:
            raise ValueError("qltx: this file system was given only recipients: it can write, not read")
        f = self.fs.open(tpath, "rb", cache_type="none")
        fd: int | None = None
        if isinstance(self.fs, LocalFileSystem):
            # A local file: the reader preads its descriptor, with no Python in the loop.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                fd = f.fileno()
        return self._keyring.open(f if fd is None else fd, [f], name=tpath), fd

    def _plaintext_size(self, entry: dict[str, Any]) -> int:
        key = (entry["name"], int(entry.get("size") or 0), entry.get("mtime") or entry.get("ETag") or entry.get("etag"))
        size = self._sizes.get(key)
        if size is None:
            opened, _ = self._open_container(entry["name"])
            try:
                size = int(opened.reader.pt_total_len)
            finally:
                opened.close()
            self._sizes[key] = size
        return size

    def _entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        out["name"] = entry["name"]
        if entry.get("type") == "file":
            out["size"] = self._plaintext_size(entry)
            out["stored_size"] = entry.get("size")
        return out

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._entry(self.fs.info(self._target_path(path), **kwargs))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entries = [
            e
            for e in self.fs.ls(self._target_path(path), detail=True, **kwargs)
            if e.get("type") == "directory" or e["name"].endswith(SUFFIX)
        ]
        if not detail:
            return [e["name"] for e in entries]
        return [self._entry(e) for e in entries]

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._target_path(path))

    # --- opening -------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> QeltrixFile | ContainerWriter:
        tpath = self._target_path(path)
        if mode == "rb":
            opened, fd = self._open_container(tpath)
            return QeltrixFile(opened, self, tpath, fd)
        if mode not in ("wb", "xb"):
            raise ValueError(f"qltx: mode must be 'rb' or 'wb', not {mode!r}")
        options = {**self._pack_options, **kwargs}
        pack_kwargs: dict[str, Any] = {
            "passphrase": self._credentials.get("passphrase"),
            "key": self._credentials.get("key"),
            **options,
        }
        if self._recipients:
            pack_kwargs["recipients"] = self._recipients
        if pack_kwargs["passphrase"] is None and pack_kwargs["key"] is None and not self._recipients:
            raise ValueError("qltx: writing needs key_file, passphrase_file, recipients or $QELTRIX_PASSPHRASE")
        if mode == "xb" and self.fs.exists(tpath):
            raise FileExistsError(tpath)
        if isinstance(self.fs, LocalFileSystem) and type(self.fs)._open is LocalFileSystem._open:
            self.fs.makedirs(self.fs._parent(tpath), exist_ok=True)
            return ContainerWriter(tpath, pack_kwargs, name=tpath)  # atomic: appears when complete
        return _PackingFile(self.fs.open(tpath, "wb"), pack_kwargs, tpath)

    # --- delegated -----------------------------------------------------------------------

    def rm_file(self, path: str) -> None:
        self.fs.rm_file(self._target_path(path))

    def _rm(self, path: str) -> None:
        self.fs.rm_file(self._target_path(path))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._target_path(path), exist_ok=exist_ok)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._target_path(path), create_parents=create_parents, **kwargs)
