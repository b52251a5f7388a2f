"""``qeltrix mount``: a read-only FUSE file system over a directory of containers.

Every ``NAME.qltx`` under the source directory shows as ``NAME`` with its plaintext size;
subdirectories show as directories; other files are not shown. A ``pread`` at any offset
decrypts only the blocks that cover it; a block that fails authentication gives ``EIO`` to
the reads that touch it and to nothing else. Files are opened with direct I/O: the kernel
neither reads ahead (a read never pulls in, or fails on, a block nobody asked for) nor keeps
plaintext in its page cache, and each read reaches the container reader, which keeps a few
decrypted blocks per open file for the small reads that follow one another.

The binding is ``mfusepy`` (libfuse 3 through ctypes): measured on this project's reader,
a 64 KiB random read spends most of its time decrypting and authenticating the block, and
the FUSE round trip through Python adds tens of microseconds to it (benches/DATA.md); the
reader releases the GIL while it reads and decrypts, so libfuse's threads read in parallel.

The source may be ``s3://BUCKET/PREFIX`` (:class:`ObjectMount`): the same tree over the objects
under the prefix, directories from the ``/``-delimited keys (one ListObjectsV2 per directory,
kept for ``LISTING_TTL`` seconds). A container's plaintext size costs opening it (two ranged
GETs) the first time it is asked for, and is kept by key and ETag; reads go through the Rust
S3 reader, opened once per open file: ranged GETs pinned to the ETag, never a whole object.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys
import threading
import time
from typing import Any

import mfusepy

from ._container import _Opened
from ._keyring import KeyRing
from ._store import list_level, open_object, split_prefix
from .errors import QeltrixError

SUFFIX = ".qltx"


class ContainerMount(mfusepy.Operations):  # type: ignore[misc]  # mfusepy is untyped
    """The FUSE operations: ``getattr``, ``readdir``, ``open``, ``read``, ``release``, ``statfs``."""

    use_ns = True

    def __init__(self, root: str, keyring: KeyRing, *, log: Any = None, mountpoint: str = "") -> None:
        self.root = os.path.realpath(root)
        self.mountpoint = mountpoint
        self.keyring = keyring
        self._log = log
        self._open: dict[int, _Opened] = {}
        self._fh = itertools.count(1)
        self._sizes: dict[tuple[int, int, int, int], int] = {}
        self._lock = threading.Lock()
        self.mounted = False

    # --- paths -----------------------------------------------------------------------------

    def _real(self, path: str) -> tuple[str, os.stat_result]:
        """The directory or container behind a mount path, and its ``stat``."""
        rel = path.lstrip("/")
        if ".." in rel.split("/"):
            raise mfusepy.FuseOSError(errno.ENOENT)
        base = os.path.join(self.root, rel) if rel else self.root
        if rel:
            try:
                st = os.stat(base + SUFFIX)
                if stat.S_ISREG(st.st_mode):
                    return base + SUFFIX, st
            except OSError:
                pass
        try:
            st = os.stat(base)
        except OSError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        if not stat.S_ISDIR(st.st_mode):
            raise mfusepy.FuseOSError(errno.ENOENT)
        return base, st

    def _plaintext_size(self, real: str, st: os.stat_result) -> int:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        size = self._sizes.get(key)
        if size is None:
            opened = self._open_container(real)
            try:
                size = int(opened.reader.pt_total_len)
            finally:
                opened.close()
            with self._lock:
                self._sizes[key] = size
        return size

    def _open_container(self, real: str) -> _Opened:
        try:
            f = open(real, "rb", buffering=0)  # noqa: SIM115 - owned by the _Opened
        except OSError as e:
            raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        try:
            return self.keyring.open(f.fileno(), [f], name=real)
        except QeltrixError as e:
            self._say(f"{real}: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None

    def _say(self, message: str) -> None:
        if self._log is not None:
            print(f"qeltrix mount: {message}", file=self._log, flush=True)

    # --- operations ------------------------------------------------------------------------

    def init(self, path: str) -> None:
        self.mounted = True
        if self.mountpoint:
            self._say(f"mounted {self.root} on {self.mountpoint}; unmount: fusermount3 -u {self.mountpoint}")

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        real, st = self._real(path)
        out: dict[str, Any] = {
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }
        if stat.S_ISDIR(st.st_mode):
            out.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=2, st_size=0)
        else:
            size = self._plaintext_size(real, st)
            out.update(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=size, st_blocks=(size + 511) // 512)
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        real, st = self._real(path)
        if not stat.S_ISDIR(st.st_mode):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        names = [".", ".."]
        seen = set()
        try:
            entries = sorted(os.scandir(real), key=lambda e: e.name)
        except OSError as err:
            raise mfusepy.FuseOSError(err.errno or errno.EIO) from None
        dirs = {d.name for d in entries if d.is_dir()}
        for entry in entries:
            if entry.name in dirs:
                name = entry.name
            elif entry.name.endswith(SUFFIX) and len(entry.name) > len(SUFFIX) and entry.is_file():
                name = entry.name[: -len(SUFFIX)]
                if name in dirs:
                    continue  # a directory of the same name wins
            else:
                continue
            if name not in seen:
                seen.add(name)
                names.append(name)
        return names

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        real, st = self._real(path)
        if stat.S_ISDIR(st.st_mode):
            raise mfusepy.FuseOSError(errno.EISDIR)
        opened = self._open_container(real)
        fh = next(self._fh)
        with self._lock:
            self._open[fh] = opened
        fi.fh = fh
        fi.direct_io = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        opened = self._open.get(fi.fh)
        if opened is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        try:
            opened.check_end(offset, size)
            data: bytes = opened.reader.read_at(offset, size)
        except QeltrixError as e:
            self._say(f"{path}: read of {size} bytes at {offset}: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None
        return data

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            opened = self._open.pop(fi.fh, None)
        if opened is not None:
            opened.close()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.root)
        return {
            "f_bsize": sv.f_bsize,
            "f_frsize": sv.f_frsize,
            "f_blocks": sv.f_blocks,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": sv.f_files,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": max(1, sv.f_namemax - len(SUFFIX)),
        }


LISTING_TTL = 10.0  # seconds a directory listing of an s3:// source is reused


class ObjectMount(ContainerMount):
    """The same operations over ``s3://BUCKET/PREFIX``: containers are objects, directories
    are ``/``-delimited key prefixes."""

    def __init__(self, url: str, keyring: KeyRing, *, log: Any = None, mountpoint: str = "") -> None:
        super().__init__(os.curdir, keyring, log=log, mountpoint=mountpoint)
        self.bucket, self.prefix = split_prefix(url)
        self.root = f"s3://{self.bucket}/{self.prefix}"
        self._listings: dict[str, tuple[float, set[str], dict[str, tuple[int, str | None, int]]]] = {}
        self._obj_sizes: dict[tuple[str, str | None], int] = {}
        self._started = time.time_ns()

    def _listing(self, rel: str) -> tuple[set[str], dict[str, tuple[int, str | None, int]]]:
        """Sub-directory names and containers (``NAME`` -> size, ETag, mtime) of directory ``rel``."""
        now = time.monotonic()
        got = self._listings.get(rel)
        if got is not None and now - got[0] < LISTING_TTL:
            return got[1], got[2]
        try:
            dirs, objects = list_level(self.bucket, self.prefix + (rel + "/" if rel else ""))
        except QeltrixError as e:
            self._say(f"listing {self.root}{rel}: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None
        files = {
            name[: -len(SUFFIX)]: (size, etag, mtime)
            for name, size, etag, mtime in objects
            if name.endswith(SUFFIX) and len(name) > len(SUFFIX)
        }
        dirset = set(dirs)
        with self._lock:
            self._listings[rel] = (now, dirset, files)
        return dirset, files

    def _entry(self, path: str) -> tuple[str, tuple[int, str | None, int] | None]:
        """The key-relative path behind a mount path, and its listing entry (None: a directory)."""
        rel = path.strip("/")
        if not rel:
            return rel, None
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise mfusepy.FuseOSError(errno.ENOENT)
        parent, _, name = rel.rpartition("/")
        dirs, files = self._listing(parent)
        if name in dirs:
            return rel, None  # a directory of the same name wins, as in readdir
        if name in files:
            return rel, files[name]
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _open_object(self, rel: str) -> tuple[_Opened, str | None]:
        """The container at ``rel`` opened, and the ETag its reads are pinned to."""
        url = f"s3://{self.bucket}/{self.prefix}{rel}{SUFFIX}"
        try:
            obj = open_object(url)
            return self.keyring.open(obj, [], name=url), obj.etag
        except QeltrixError as e:
            self._say(f"{url}: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        rel, entry = self._entry(path)
        out: dict[str, Any] = {"st_uid": os.getuid(), "st_gid": os.getgid()}
        if entry is None:
            t = self._started
            out.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=2, st_size=0, st_atime=t, st_mtime=t, st_ctime=t)
            return out
        _, etag, mtime = entry
        size = self._obj_sizes.get((rel, etag))
        if size is None:
            opened, opened_etag = self._open_object(rel)
            try:
                size = int(opened.reader.pt_total_len)
            finally:
                opened.close()
            with self._lock:  # by the ETag read: a listing older than the object is not trusted
                self._obj_sizes[(rel, opened_etag)] = size
        t = mtime * 1_000_000_000
        out.update(
            st_mode=stat.S_IFREG | 0o444,
            st_nlink=1,
            st_size=size,
            st_blocks=(size + 511) // 512,
            st_atime=t,
            st_mtime=t,
            st_ctime=t,
        )
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        rel, entry = self._entry(path)
        if entry is not None:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        dirs, files = self._listing(rel)
        return [".", "..", *sorted(dirs | set(files))]

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        rel, entry = self._entry(path)
        if entry is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        opened, _ = self._open_object(rel)
        fh = next(self._fh)
        with self._lock:
            self._open[fh] = opened
        fi.fh = fh
        fi.direct_io = 1
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 65536, "f_frsize": 65536, "f_namemax": 1024 - len(SUFFIX)}


def run(
    root: str,
    mountpoint: str,
    keyring: KeyRing,
    *,
    allow_other: bool = False,
    log: Any = sys.stderr,
) -> None:
    """Mount ``root`` (a directory or ``s3://BUCKET/PREFIX``) at ``mountpoint`` and serve until
    it is unmounted (``fusermount3 -u``) or the process gets SIGTERM, SIGINT or SIGHUP
    (libfuse's handlers unmount cleanly)."""
    if root.startswith("s3://"):
        ops: ContainerMount = ObjectMount(root, keyring, log=log, mountpoint=mountpoint)
    else:
        ops = ContainerMount(root, keyring, log=log, mountpoint=mountpoint)
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "fsname": "qeltrix:" + ops.root,
        "subtype": "qeltrix",
        "default_permissions": True,
    }
    if allow_other:
        options["allow_other"] = True
    try:
        mfusepy.FUSE(ops, mountpoint, raw_fi=True, **options)
    except RuntimeError:
        # libfuse reports a loop ended by a signal as a failure (status 8), after it has
        # unmounted: that is the clean way out, not an error.
        if not ops.mounted or os.path.ismount(mountpoint):
            raise
