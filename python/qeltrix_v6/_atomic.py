"""Atomic output files: write to a temporary file beside the target, fsync, rename.

A failure, an exception or Ctrl-C before :meth:`AtomicOutput.commit` removes the temporary
file, so no half-written file ever appears under the final name.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from types import TracebackType
from typing import BinaryIO

from .errors import QeltrixIOError

TEMP_SUFFIX = ".qeltrix-tmp"


def _is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def builtins_open(path: str) -> BinaryIO:
    try:
        return open(path, "wb", buffering=0)
    except OSError as e:
        raise QeltrixIOError(f"cannot write {path}: {e.strerror}") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicOutput:
    """Context manager yielding a binary file that becomes ``path`` only on :meth:`commit`."""

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        self.path = os.fspath(path)
        self.overwrite = overwrite
        self._file: BinaryIO | None = None
        self._tmp: str | None = None
        self._special = False

    def __enter__(self) -> BinaryIO:
        if _is_special(self.path):
            # /dev/null, a FIFO, a terminal: not a file to replace, so write to it directly.
            self._special = True
            self._file = builtins_open(self.path)
            return self._file
        if not self.overwrite and os.path.lexists(self.path):
            raise QeltrixIOError(f"{self.path} already exists (use --force to overwrite)")
        parent = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        try:
            fd, self._tmp = tempfile.mkstemp(dir=parent, prefix=f".{base}.", suffix=TEMP_SUFFIX)
        except OSError as e:
            raise QeltrixIOError(f"cannot create output in {parent}: {e.strerror}") from e
        os.fchmod(fd, 0o666 & ~_umask())
        self._file = os.fdopen(fd, "wb", buffering=0)
        return self._file

    @property
    def temp_path(self) -> str:
        """The temporary file being written (valid inside the ``with`` block)."""
        assert self._tmp is not None or self._special
        return self._tmp if self._tmp is not None else self.path

    def commit(self) -> None:
        """Flush, fsync and rename the temporary file to the final name."""
        assert self._file is not None
        if self._special:
            self._file.close()
            return
        assert self._tmp is not None
        if not self.overwrite and os.path.lexists(self.path):
            self._file.close()
            raise QeltrixIOError(f"{self.path} already exists (use --force to overwrite)")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as e:  # e.g. the target is a directory, or its name is empty
            raise QeltrixIOError(f"cannot write {self.path}: {e.strerror}") from e
        self._tmp = None
        with contextlib.suppress(OSError):
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None
