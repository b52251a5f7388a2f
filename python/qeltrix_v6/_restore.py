"""Safe restores of archive members (docs/FORMAT.md section 16).

Nothing is written outside the target directory: every member is checked before anything is
written (no absolute paths or ``..``, no symlink pointing out, no path through a symlink
member, no two names equal after Unicode NFC normalisation), and every file is created
relative to a directory descriptor opened with ``O_NOFOLLOW`` component by component, so a
symlink already present on disk cannot redirect a write either. Each file is written to a
temporary name in its directory and renamed into place; an existing file is replaced only with
``overwrite``. Directory modes and times are applied last, deepest first (as tar does).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import unicodedata
from collections.abc import Sequence
from typing import Any

from .errors import QeltrixError, QeltrixIOError

_CHUNK = 1 << 20
_TMP = ".qeltrix-tmp"


class UnsafeMemberError(QeltrixError):
    """A member would be restored outside the target directory, or collides with another one
    (docs/FORMAT.md section 16): nothing of the restore was written."""


def _unsafe(message: str) -> Exception:
    return UnsafeMemberError(message)


def check_members(members: Sequence[Any]) -> None:
    """Refuse, before anything is written, a set of members that could write outside the
    target directory or collide with itself."""
    symlinks = {m.path for m in members if m.type == "symlink"}
    seen: dict[str, str] = {}
    for m in members:
        parts = m.path.split("/")
        if m.path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in m.path:
            raise _unsafe(f"member {m.path!r}: absolute path or '..' component; refusing to restore")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise _unsafe(f"member {m.path!r} lies under the symlink {'/'.join(parts[:i])!r}; refusing to restore")
        norm = unicodedata.normalize("NFC", m.path)
        if norm in seen:
            raise _unsafe(
                f"members {seen[norm]!r} and {m.path!r} differ only by Unicode normalisation; refusing to restore"
            )
        seen[norm] = m.path
        if m.type == "symlink":
            target = m.link or ""
            if target.startswith("/"):
                raise _unsafe(f"symlink {m.path!r} points to the absolute path {target!r}; refusing to restore")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(m.path), target))
            if resolved == ".." or resolved.startswith("../"):
                raise _unsafe(f"symlink {m.path!r} points outside the target directory ({target!r})")
        if m.type == "hardlink":
            t = m.link or ""
            if t.startswith("/") or ".." in t.split("/"):
                raise _unsafe(f"hard link {m.path!r} points outside the target directory ({t!r})")


def _open_dir(root_fd: int, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of ``root/parts...``, following no symlink, creating directories on the way."""
    fd = os.dup(root_fd)
    try:
        for p in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(p, 0o777, dir_fd=fd)  # the umask applies; members' modes are set at the end
            try:
                nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise _unsafe(
                    f"{'/'.join(parts)}: {p!r} is not a directory on disk ({e.strerror}); refusing to write through it"
                ) from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _exists(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_member(
    reader: Any, m: Any, dir_fd: int, name: str, *, overwrite: bool, as_file: bool = False, link_fd: int | None = None
) -> None:
    """Write one non-directory member as ``name`` in ``dir_fd``: to a temporary name, then
    renamed over ``name`` (only with ``overwrite`` if it exists). A hard link restored alone
    (``as_file``) is written as a regular file."""
    import stat as st

    old = _exists(name, dir_fd)
    if old is not None and (not overwrite or st.S_ISDIR(old.st_mode)):
        what = "a directory" if st.S_ISDIR(old.st_mode) else "a file"
        hint = "" if st.S_ISDIR(old.st_mode) else " (use --force / overwrite=True to replace it)"
        raise QeltrixIOError(f"{m.path}: {what} of that name already exists{hint}")
    tmp = f".{name[:100]}.{secrets.token_hex(4)}{_TMP}"
    try:
        if m.type == "symlink":
            os.symlink(m.link, tmp, dir_fd=dir_fd)
            os.utime(tmp, ns=(m.mtime_ns, m.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        elif m.type == "hardlink" and not as_file and link_fd is not None:
            target_dir, target_name = link_fd, posixpath.basename(m.link)
            os.link(target_name, tmp, src_dir_fd=target_dir, dst_dir_fd=dir_fd, follow_symlinks=False)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
            try:
                pos, end = m.offset, m.offset + m.size
                while pos < end:
                    data = reader.read_at(pos, min(_CHUNK, end - pos))
                    if not data:
                        raise QeltrixIOError(f"{m.path}: the archive ended inside this member")
                    os.write(fd, data)
                    pos += len(data)
                os.fchmod(fd, m.mode & 0o1777)  # no setuid/setgid bits from an archive
                os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            finally:
                os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def restore(reader: Any, all_members: Sequence[Any], chosen: Sequence[Any], dest: str, *, overwrite: bool) -> int:
    """Restore ``chosen`` members (checked together with every member) under ``dest``."""
    check_members(all_members)
    try:
        os.makedirs(dest, exist_ok=True)
        root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise QeltrixIOError(f"{dest}: {e.strerror}") from None
    dirs: list[Any] = []
    chosen_paths = {m.path for m in chosen}
    try:
        for m in chosen:
            parts = m.path.split("/")
            if m.type == "dir":
                fd = _open_dir(root, parts, create=True)
                os.close(fd)
                dirs.append(m)
                continue
            pfd = _open_dir(root, parts[:-1], create=True)
            try:
                lfd = None
                alone = m.type == "hardlink" and m.link not in chosen_paths
                if m.type == "hardlink" and not alone:
                    lfd = _open_dir(root, (m.link or "").split("/")[:-1], create=False)
                try:
                    write_member(reader, m, pfd, parts[-1], overwrite=overwrite, as_file=alone, link_fd=lfd)
                finally:
                    if lfd is not None:
                        os.close(lfd)
            finally:
                os.close(pfd)
        for m in sorted(dirs, key=lambda d: d.path.count("/"), reverse=True):
            fd = _open_dir(root, m.path.split("/"), create=False)
            try:
                os.fchmod(fd, m.mode & 0o1777)
                os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            finally:
                os.close(fd)
    except OSError as e:
        if isinstance(e, QeltrixIOError):
            raise
        raise QeltrixIOError(f"cannot restore into {dest}: {e.strerror or e}") from None
    finally:
        os.close(root)
    return len(chosen)
