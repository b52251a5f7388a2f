"""Archives: many files in one container, each restored without reading the others.

An archive's plaintext is the members' bytes, one after another, then a *member table* and a
32-byte *locator* (docs/FORMAT.md section 16); the header's ``ARCHIVE`` flag says so. Packing
goes through the ordinary pipeline (:func:`qeltrix_v6.pack`), so it runs on every core with
bounded memory; reading a member decrypts only the blocks that hold it.

>>> import io, os, tempfile, qeltrix_v6
>>> from qeltrix_v6.archive import pack_archive
>>> tree = tempfile.mkdtemp()
>>> with open(os.path.join(tree, "a.txt"), "wb") as f:
...     _ = f.write(b"hello")
>>> out = os.path.join(tempfile.mkdtemp(), "t.qltx")
>>> _ = pack_archive([tree], out, key=bytes(32))
>>> with qeltrix_v6.open_archive(out, key=bytes(32)) as a:
...     a.open(os.path.basename(tree) + "/a.txt").read()
b'hello'
"""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import posixpath
import stat
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from . import _core
from ._atomic import AtomicOutput
from ._container import ContainerFile, PackResult, PathOrFile, _Opened, open_reader, pack
from ._restore import restore, write_member
from .errors import IntegrityError, LimitExceededError, MalformedError, QeltrixIOError

HEADER_FLAG_ARCHIVE: int = _core.HEADER_FLAG_ARCHIVE
TYPE_FILE, TYPE_DIR, TYPE_SYMLINK, TYPE_HARDLINK = 0, 1, 2, 3
TYPE_NAMES = {TYPE_FILE: "file", TYPE_DIR: "dir", TYPE_SYMLINK: "symlink", TYPE_HARDLINK: "hardlink"}
_TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}
_MEMBER = struct.Struct("<BBHIqQQI")  # type, reserved, path_len, mode, mtime_ns, offset, size, link_len
MEMBER_FIXED_LEN = _MEMBER.size  # 36
_LOCATOR = struct.Struct("<QQQ8s")
LOCATOR_LEN = _LOCATOR.size  # 32
LOCATOR_MAGIC = b"QLTXARC1"
MAX_PATH_LEN = 4096
MAX_LINK_LEN = 4096
MAX_TABLE_LEN = 1 << 30  # FORMAT.md section 16: a table is read whole
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One entry of an archive's member table."""

    path: str
    type: str  # "file", "dir", "symlink" or "hardlink"
    mode: int
    mtime_ns: int
    offset: int
    size: int
    link: str | None = None  # a symlink's target, a hard link's target member

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "size": self.size,
            "offset": self.offset,
        }
        if self.link is not None:
            d["link"] = self.link
        return d


# --- the member table (FORMAT.md section 16) -------------------------------------------------------


def encode_member(m: Member) -> bytes:
    path = m.path.encode()
    link = (m.link or "").encode()
    fixed = _MEMBER.pack(_TYPE_CODES[m.type], 0, len(path), m.mode, m.mtime_ns, m.offset, m.size, len(link))
    return fixed + path + link


def encode_tail(members: Sequence[Member], table_offset: int) -> bytes:
    """``member_table || locator`` for members whose data ends at ``table_offset``."""
    table = b"".join(encode_member(m) for m in members)
    return table + _LOCATOR.pack(table_offset, len(table), len(members), LOCATOR_MAGIC)


def _corrupt(what: str) -> IntegrityError:
    return IntegrityError(f"corrupt member table: {what}")


def _valid_path(p: str) -> bool:
    return bool(p) and "\0" not in p and not p.startswith("/") and all(c not in ("", ".", "..") for c in p.split("/"))


def parse_locator(b: bytes, pt_total_len: int) -> tuple[int, int, int]:
    """``(table_offset, table_len, member_count)`` from the last 32 plaintext bytes, checked."""
    table_offset, table_len, count, magic = _LOCATOR.unpack(b)
    if magic != LOCATOR_MAGIC:
        raise _corrupt("no locator at the end of the plaintext")
    if table_offset + table_len + LOCATOR_LEN != pt_total_len:
        raise _corrupt("the locator does not match the plaintext length")
    if table_len > MAX_TABLE_LEN:
        raise LimitExceededError(f"member table of {table_len:,} bytes is over the {MAX_TABLE_LEN:,}-byte limit")
    if count > table_len // MEMBER_FIXED_LEN:
        raise _corrupt("member_count does not fit in table_len")
    return table_offset, table_len, count


def parse_table(data: bytes, table_offset: int, count: int) -> list[Member]:
    """Decode and check a member table (FORMAT.md section 16, checks 2-4)."""
    members: list[Member] = []
    seen: dict[str, Member] = {}
    pos = 0
    for _ in range(count):
        if pos + MEMBER_FIXED_LEN > len(data):
            raise _corrupt("a member runs past the table")
        code, reserved, path_len, mode, mtime_ns, offset, size, link_len = _MEMBER.unpack_from(data, pos)
        pos += MEMBER_FIXED_LEN
        if code not in TYPE_NAMES or reserved or mode > 0o7777:
            raise _corrupt("a member has an unknown type, reserved bits or mode bits")
        if not 1 <= path_len <= MAX_PATH_LEN or link_len > MAX_LINK_LEN or pos + path_len + link_len > len(data):
            raise _corrupt("a member's path or link length is out of range")
        try:
            path = data[pos : pos + path_len].decode()
            link = data[pos + path_len : pos + path_len + link_len].decode()
        except UnicodeDecodeError:
            raise _corrupt("a member name is not UTF-8") from None
        pos += path_len + link_len
        if not _valid_path(path):
            raise _corrupt(f"member path {path!r} is absolute, empty or has '.'/'..' components")
        if path in seen:
            raise _corrupt(f"member {path!r} appears twice")
        kind = TYPE_NAMES[code]
        if kind == "file":
            ok = link_len == 0 and offset + size <= table_offset
        elif kind == "dir":
            ok = link_len == 0 and offset == 0 and size == 0
        elif kind == "symlink":
            ok = link_len >= 1 and offset == 0 and size == 0 and "\0" not in link
        else:
            target = seen.get(link)
            ok = target is not None and target.type == "file" and (offset, size) == (target.offset, target.size)
        if not ok:
            raise _corrupt(f"member {path!r} ({kind}) has inconsistent fields")
        m = Member(path, kind, mode, mtime_ns, offset, size, link if kind in ("symlink", "hardlink") else None)
        seen[path] = m
        members.append(m)
    if pos != len(data):
        raise _corrupt("bytes left over after the last member")
    return members


# --- writing -----------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """A member being written: its data comes from ``source`` (None for non-files)."""

    member: Member
    source: Any = None


class _ArchiveSource(io.RawIOBase):
    """The archive's plaintext as one readable stream: each member's bytes, then the table."""

    def __init__(self, entries: Iterator[_Entry]) -> None:
        super().__init__()
        self._entries = entries
        self._current: _Entry | None = None
        self._current_len = 0
        self._offset = 0
        self._by_path: dict[str, int] = {}
        self.members: list[Member] = []
        self._tail: io.BytesIO | None = None

    def readable(self) -> bool:
        return True

    def _add(self, m: Member) -> None:
        old = self._by_path.get(m.path)
        if old is not None:  # a later tar entry of the same name wins, as in tar
            del self.members[old]
            self._by_path = {x.path: i for i, x in enumerate(self.members)}
        self._by_path[m.path] = len(self.members)
        self.members.append(m)

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while True:
            if self._tail is not None:
                return self._tail.readinto(view)
            if self._current is not None:
                n = self._current.source.readinto(view)
                if n:
                    self._current_len += n
                    self._offset += n
                    return int(n)
                close = getattr(self._current.source, "close", None)
                if close is not None:
                    close()
                m = self._current.member
                self._add(
                    Member(m.path, "file", m.mode, m.mtime_ns, self._offset - self._current_len, self._current_len)
                )
                self._current = None
                continue
            entry = next(self._entries, None)
            if entry is None:
                self._tail = io.BytesIO(encode_tail(self._fix_links(), self._offset))
                continue
            if entry.source is not None:
                self._current, self._current_len = entry, 0
            else:
                self._add(entry.member)

    def _fix_links(self) -> list[Member]:
        """Hard links carry their target's offset and size (known once the target is read)."""
        files = {m.path: m for m in self.members if m.type == "file"}
        out = []
        for m in self.members:
            if m.type == "hardlink":
                t = files.get(m.link or "")
                if t is None:  # its target was replaced or skipped: drop the link
                    continue
                m = Member(m.path, "hardlink", m.mode, m.mtime_ns, t.offset, t.size, m.link)
            out.append(m)
        return out


def _member_name(p: str) -> str:
    try:
        p.encode()
    except UnicodeEncodeError:
        raise QeltrixIOError(f"{p!r}: file name is not UTF-8; an archive stores UTF-8 names") from None
    return p


def _walk(srcs: Sequence[str | os.PathLike[str]], skip: set[tuple[int, int]], skipped: list[str]) -> Iterator[_Entry]:
    """Entries for files and trees on disk, directories before their contents, sorted."""
    links: dict[tuple[int, int], str] = {}
    tops: set[str] = set()

    def one(fs_path: str, name: str) -> Iterator[_Entry]:
        try:
            st = os.lstat(fs_path)
        except OSError as e:
            raise QeltrixIOError(f"{fs_path}: {e.strerror}") from None
        name = _member_name(name)
        mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
        if (st.st_dev, st.st_ino) in skip:
            return
        if stat.S_ISDIR(st.st_mode):
            yield _Entry(Member(name, "dir", mode, mtime, 0, 0))
            try:
                names = sorted(os.listdir(fs_path))
            except OSError as e:
                raise QeltrixIOError(f"{fs_path}: {e.strerror}") from None
            for child in names:
                yield from one(os.path.join(fs_path, child), f"{name}/{child}")
        elif stat.S_ISLNK(st.st_mode):
            yield _Entry(Member(name, "symlink", mode, mtime, 0, 0, _member_name(os.readlink(fs_path))))
        elif stat.S_ISREG(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and ident in links:
                yield _Entry(Member(name, "hardlink", mode, mtime, 0, 0, links[ident]))
                return
            if st.st_nlink > 1:
                links[ident] = name
            try:
                f = open(fs_path, "rb", buffering=0)  # noqa: SIM115 - closed by _ArchiveSource
            except OSError as e:
                raise QeltrixIOError(f"{fs_path}: {e.strerror}") from None
            yield _Entry(Member(name, "file", mode, mtime, 0, 0), f)
        else:
            skipped.append(fs_path)  # devices, FIFOs, sockets: not archived (as zip)

    for src in srcs:
        fs_path = os.fspath(src)
        top = os.path.basename(os.path.normpath(os.path.abspath(fs_path)))
        if not top:
            raise QeltrixIOError(f"{fs_path}: cannot archive the root directory as a member name")
        if top in tops:
            raise QeltrixIOError(f"two inputs are both named {top!r} in the archive")
        tops.add(top)
        yield from one(fs_path, top)


def _tar_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MalformedError(f"tar member {name!r} has a '..' component; refusing it")
    return _member_name("/".join(parts))


def _from_tar(stream: IO[bytes], skipped: list[str]) -> Iterator[_Entry]:
    """Entries from a tar stream, read once from the start (no seeking, no temporary copy)."""
    import tarfile  # only here: keeps `import qeltrix_v6` cheap

    try:
        tf = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed below
    except tarfile.TarError as e:
        raise MalformedError(f"the input is not a tar stream: {e}") from None
    with tf:
        while True:
            try:
                ti = tf.next()
            except tarfile.TarError as e:
                raise MalformedError(f"bad tar stream: {e}") from None
            if ti is None:
                return
            name = _tar_name(ti.name)
            if not name:
                continue  # "./" itself
            mode, mtime = ti.mode & 0o7777, int(ti.mtime * 1_000_000_000)
            if ti.isreg():
                yield _Entry(Member(name, "file", mode, mtime, 0, 0), tf.extractfile(ti))
            elif ti.isdir():
                yield _Entry(Member(name, "dir", mode, mtime, 0, 0))
            elif ti.issym():
                yield _Entry(Member(name, "symlink", mode, mtime, 0, 0, _member_name(ti.linkname)))
            elif ti.islnk():
                yield _Entry(Member(name, "hardlink", mode, mtime, 0, 0, _tar_name(ti.linkname)))
            else:
                skipped.append(ti.name)


@dataclass(frozen=True)
class ArchiveResult(PackResult):
    """What :func:`pack_archive` wrote."""

    member_count: int = 0
    skipped: list[str] = field(default_factory=list)


def pack_archive(
    srcs: Sequence[str | os.PathLike[str]],
    dst: str | os.PathLike[str] | IO[bytes],
    *,
    from_tar: IO[bytes] | None = None,
    overwrite: bool = True,
    **pack_kwargs: Any,
) -> ArchiveResult:
    """Pack files and directory trees (or, with ``from_tar``, a tar stream) into the archive
    ``dst``. Takes :func:`qeltrix_v6.pack`'s credentials and options. A directory becomes a
    member named after it, with its whole tree under it (as ``tar c DIR``); symlinks are stored
    as symlinks, hard links as links; devices, FIFOs and sockets are skipped and listed in
    ``skipped``. A path ``dst`` is written atomically."""
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        skip: set[tuple[int, int]] = set()
        atomic: AtomicOutput | None = None
        target: Any = dst
        if isinstance(dst, str | os.PathLike):
            new_output = AtomicOutput(dst, overwrite=overwrite)
            out = stack.enter_context(new_output)
            st = os.fstat(out.fileno())
            skip.add((st.st_dev, st.st_ino))  # never archive the archive being written
            atomic, target = new_output, out.fileno()
        entries = _from_tar(from_tar, skipped) if from_tar is not None else _walk(srcs, skip, skipped)
        source = _ArchiveSource(entries)
        result = pack(cast(IO[bytes], source), target, _archive=True, **pack_kwargs)
        if atomic is not None:
            atomic.commit()
    count = len(source._fix_links())
    return ArchiveResult(result.pt_len, result.block_count, result.container_len, count, skipped)


# --- reading ----------------------------------------------------------------------------------------


class MemberFile(ContainerFile):
    """A read-only, seekable file over one member: :func:`qeltrix_v6.open`'s file object,
    restricted to the member's bytes. Closing it leaves the archive open."""

    def __init__(self, opened: _Opened, member: Member) -> None:
        super().__init__(opened, name=member.path)
        self._base = member.offset
        self.size = member.size

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        if n == 0:
            return 0
        data = self._opened.reader.read_at(self._base + self._pos, n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        self._checkClosed()
        n = max(0, self.size - self._pos)
        data: bytes = self._opened.reader.read_at(self._base + self._pos, n) if n else b""
        self._pos += len(data)
        return data

    def close(self) -> None:
        io.RawIOBase.close(self)  # the reader belongs to the Archive


class Archive:
    """An open archive: :func:`open_archive`'s result. Use as a context manager."""

    def __init__(self, opened: _Opened) -> None:
        self._opened = opened
        r = opened.reader
        if not int(r.header_flags) & HEADER_FLAG_ARCHIVE:
            raise MalformedError(
                f"{opened.name or 'the container'} is a single-file container, not an archive "
                "(use qeltrix_v6.open / qeltrix cat)"
            )
        total = int(r.pt_total_len)
        if total < LOCATOR_LEN:
            raise _corrupt("the plaintext is shorter than the locator")
        opened.check_end(0, total)
        table_offset, table_len, count = parse_locator(bytes(r.read_at(total - LOCATOR_LEN, LOCATOR_LEN)), total)
        table = bytes(r.read_at(table_offset, table_len)) if table_len else b""
        self.data_len = table_offset
        self._members = parse_table(table, table_offset, count)
        self._by_path = {m.path: m for m in self._members}
        spans = sorted((m.offset, m.offset + m.size, m.path) for m in self._members if m.type == "file" and m.size)
        self._span_starts = [s[0] for s in spans]
        self._spans = spans

    @property
    def name(self) -> str | None:
        return self._opened.name

    def members(self) -> list[Member]:
        """Every member, in table order (directories before their contents)."""
        return list(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def member(self, path: str) -> Member:
        m = self._by_path.get(path.strip("/"))
        if m is None:
            raise QeltrixIOError(f"{path}: no such member in {self.name or 'the archive'}")
        return m

    def open(self, path: str) -> MemberFile:
        """A seekable binary file over the member ``path`` (a file or hard link)."""
        m = self.member(path)
        if m.type not in ("file", "hardlink"):
            raise QeltrixIOError(f"{path}: is a {m.type}, not a file")
        return MemberFile(self._opened, m)

    def members_in(self, pt_offset: int, pt_len: int) -> list[str]:
        """The file members with bytes in plaintext ``[pt_offset, pt_offset + pt_len)``
        (``verify`` names them for a bad block); ``"(member table)"`` for the table."""
        end = pt_offset + pt_len
        out = []
        i = max(0, bisect.bisect_right(self._span_starts, pt_offset) - 1)
        while i < len(self._spans) and self._spans[i][0] < end:
            _start, e, p = self._spans[i]
            if e > pt_offset:
                out.append(p)
            i += 1
        if end > self.data_len:
            out.append("(member table)")
        return out

    def extract(self, path: str, dest: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write the member ``path`` (a file, or a symlink as a symlink) to ``dest``: a
        directory (the member keeps its base name) or a file path. Atomic; an existing file is
        replaced only with ``overwrite``. Returns the path written."""
        m = self.member(path)
        d = os.fspath(dest)
        if os.path.isdir(d):
            d = os.path.join(d, posixpath.basename(m.path))
        parent, base = os.path.split(os.path.abspath(d))
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            write_member(self._opened.reader, m, fd, base, overwrite=overwrite, as_file=True)
        finally:
            os.close(fd)
        return d

    def extract_all(
        self, dest: str | os.PathLike[str], *, overwrite: bool = False, paths: Iterable[str] | None = None
    ) -> int:
        """Restore the tree (or the members ``paths`` and what is under them) into the
        directory ``dest``; see :func:`qeltrix_v6._restore.restore`. Returns the count."""
        chosen = self._members if paths is None else self._select(paths)
        return restore(self._opened.reader, self._members, chosen, os.fspath(dest), overwrite=overwrite)

    def _select(self, paths: Iterable[str]) -> list[Member]:
        out: list[Member] = []
        for p in paths:
            m = self.member(p)
            prefix = m.path + "/"
            out += [x for x in self._members if x.path == m.path or (m.type == "dir" and x.path.startswith(prefix))]
        return out

    def close(self) -> None:
        self._opened.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_archive(
    src: PathOrFile,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: Any = None,
    **read_options: Any,
) -> Archive:
    """Open an archive for reading, with :func:`qeltrix_v6.open`'s credentials and options.
    Reads the header, the index and the member table (only the blocks that hold it)."""
    read_options.setdefault("cache_blocks", 8)
    opened = open_reader(src, passphrase=passphrase, key=key, identity=identity, **read_options)
    for f in opened._owned:  # a member's frames are scattered (permuted): no kernel readahead
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
    try:
        return Archive(opened)
    except BaseException:
        opened.close()
        raise


def is_archive_file(path: str) -> bool:
    """Whether the file at ``path`` says ``ARCHIVE`` in its header flags (unauthenticated: a
    hint for choosing a code path; :class:`Archive` checks the authenticated flag)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (
        len(head) == 16 and head[:6] == b"QLTXV6" and bool(struct.unpack_from("<H", head, 14)[0] & HEADER_FLAG_ARCHIVE)
    )
