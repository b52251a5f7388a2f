"""Status lines, progress bars and the checks on input and output paths."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any

import typer

from .. import _store
from ._app import CliError, ExitCode

# --- output helpers -------------------------------------------------------------------------


def _interactive_stderr() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _status(quiet: bool, message: str) -> None:
    """A success message for a person at a terminal; silent in scripts and with --quiet."""
    if not quiet and _interactive_stderr():
        typer.echo(message, err=True)


class _ProgressBar:
    """A rich progress bar on stderr that appears on the first progress report.

    Starting lazily keeps the screen clean while a passphrase is being derived (Argon2id takes
    a noticeable moment) and for operations too short to report progress at all.
    """

    def __init__(self, description: str, total: int | None) -> None:
        self._description = description
        self._total = total
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._description, total=total if total is not None else self._total)
        self._bar.update(self._task, completed=done, total=total if total is not None else self._total)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int | None) -> Iterator[_ProgressBar | None]:
    """A progress callback drawing on stderr, or ``None`` when stderr is not a terminal or --quiet."""
    if not enabled or not _interactive_stderr():
        yield None
        return
    bar = _ProgressBar(description, total)
    try:
        yield bar
    finally:
        bar.stop()


def _check_output(dst: str, force: bool) -> None:
    """Refuse to replace an existing file without --force (checked before any passphrase prompt)."""
    if dst == "-" or _store.is_url(dst):  # an object: refused (without --force) by the upload
        return
    try:
        mode = os.stat(dst).st_mode
    except FileNotFoundError:
        if os.path.islink(dst) and not force:  # a dangling symlink is still a name in use
            raise CliError(f"{dst} already exists", hint="use --force to overwrite it", code=ExitCode.IO) from None
        return
    except OSError as e:
        raise CliError(f"{dst}: {e.strerror}", code=ExitCode.IO) from None
    if stat.S_ISDIR(mode):
        raise CliError(f"{dst} is a directory", hint="give the output file's name", code=ExitCode.IO)
    if stat.S_ISREG(mode) and not force:
        raise CliError(f"{dst} already exists", hint="use --force to overwrite it", code=ExitCode.IO)
    # A device, FIFO or terminal (/dev/null, a named pipe) is written to directly.


def _check_input(src: str) -> None:
    if src == "-" or _store.is_url(src):  # an object: its open GET says if it is missing
        return
    if not os.path.lexists(src):
        raise CliError(f"{src}: no such file", code=ExitCode.IO)
    if os.path.isdir(src):
        raise CliError(
            f"{src} is a directory", hint="qeltrix packs one file or stream; use tar for a tree", code=ExitCode.IO
        )


def _stdin() -> Any:
    return sys.stdin.buffer


def _stdout() -> Any:
    return sys.stdout.buffer


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
