"""``qeltrix mount``: a read-only FUSE view of a directory of containers (see ``..mount``).

The FUSE binding is imported only when the command runs: ``qeltrix`` starts without it.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from ._app import CliError, ExitCode, app
from ._credentials import credentials_for_reading
from ._options import (
    DebugOpt,
    IdentityOpt,
    KeyFileOpt,
    MaxKdfMemoryOpt,
    PassphraseFileOpt,
    PassphraseTrap,
    _refuse_passphrase_value,
)

if TYPE_CHECKING:
    from .._keyring import KeyRing

_MOUNT_WAIT = 30.0  # seconds the background mount may take to appear


def _first_container(root: str) -> str | None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".qltx") and len(name) > len(".qltx"):
                return os.path.join(dirpath, name)
    return None


def _first_object(url: str) -> str | None:
    """The first container under ``s3://BUCKET/PREFIX`` (depth first, a few listings at most)."""
    from .._store import list_level, split_prefix

    bucket, prefix = split_prefix(url)
    todo = [prefix]
    for _ in range(16):
        if not todo:
            return None
        here = todo.pop()
        dirs, objects = list_level(bucket, here)
        for name, *_ in sorted(objects):
            if name.endswith(".qltx") and len(name) > len(".qltx"):
                return f"s3://{bucket}/{here}{name}"
        todo.extend(here + d + "/" for d in sorted(dirs, reverse=True))
    return None


def _load_binding() -> None:
    if not os.path.exists("/dev/fuse"):
        raise CliError("FUSE is not available here: /dev/fuse is missing", code=ExitCode.IO)
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        raise CliError(
            "qeltrix mount needs the mfusepy package", hint="pip install 'qeltrix-v6[mount]'", code=ExitCode.ERROR
        ) from None
    except OSError as e:  # mfusepy found no libfuse
        raise CliError(f"qeltrix mount needs libfuse 3: {e}", hint="Debian: apt-get install fuse3") from None


@app.command(rich_help_panel="Containers")
def mount(
    src: Annotated[
        str, typer.Argument(metavar="SRC", help="Directory of containers (NAME.qltx), or s3://BUCKET/PREFIX.")
    ],
    mountpoint: Annotated[str, typer.Argument(metavar="MOUNTPOINT", help="Empty directory to mount on.")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    identity: IdentityOpt = None,
    max_kdf_memory: MaxKdfMemoryOpt = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", "-F", help="Stay in the foreground until unmounted or signalled.")
    ] = False,
    allow_other: Annotated[
        bool,
        typer.Option(
            "--allow-other", help="Let other users read the mount (non-root needs user_allow_other in /etc/fuse.conf)."
        ),
    ] = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Mount a directory of containers read-only: NAME.qltx shows as NAME, with its plaintext.

    SRC may be s3://BUCKET/PREFIX: the objects under it, read by ranged GETs.

    Reads at any offset decrypt only the blocks that cover them; a tampered block fails
    the reads that touch it (EIO) and nothing else. Unmount with 'fusermount3 -u
    MOUNTPOINT'; with --foreground, Ctrl-C or SIGTERM unmounts too.

    [bold]Examples[/bold]

      qeltrix mount --key-file my.key /data/encrypted /mnt/plain
      duckdb -c "SELECT count(*) FROM '/mnt/plain/t.parquet'"
      fusermount3 -u /mnt/plain
    """
    _refuse_passphrase_value(passphrase)
    remote = src.startswith("s3://")
    if not remote and not os.path.isdir(src):
        raise CliError(f"{src}: not a directory", code=ExitCode.IO)
    if not os.path.isdir(mountpoint):
        raise CliError(f"{mountpoint}: not a directory (the mount point must exist)", code=ExitCode.IO)
    if os.path.ismount(mountpoint) or os.listdir(mountpoint):
        raise CliError(f"{mountpoint}: not an empty directory, or already mounted", code=ExitCode.IO)
    _load_binding()
    from .._keyring import KeyRing

    probe = _first_object(src) if remote else _first_container(src)
    creds = credentials_for_reading(
        probe or "", key_file, passphrase_file, identity_files=identity, max_kdf_memory=max_kdf_memory
    )
    if not creds.given():
        raise CliError("no key given", hint="use --key-file or --passphrase-file", code=ExitCode.USAGE)
    keyring = KeyRing(creds.kwargs())
    if probe is not None and remote:
        from .._store import open_object

        keyring.open(open_object(probe), []).close()  # a wrong key fails here, before mounting
    elif probe is not None:
        with open(probe, "rb", buffering=0) as f:
            keyring.open(f.fileno(), []).close()  # a wrong key fails here, before mounting
    if foreground:
        _serve(src, mountpoint, keyring, allow_other, sys.stderr)
        return
    # The server runs in a child of its own session; its stderr goes to a file that says why
    # a mount failed, so that the caller's stderr (a pipe, maybe) is closed when this returns.
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - shared with the child, closed below
    pid = os.fork()
    if pid == 0:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(errors.fileno(), 2)
        try:
            _serve(src, mountpoint, keyring, allow_other, None)
            os._exit(0)
        except BaseException as e:
            print(f"{e}", file=sys.stderr, flush=True)
            os._exit(1)
    with errors:
        deadline = time.monotonic() + _MOUNT_WAIT
        while not os.path.ismount(mountpoint):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                errors.seek(0)
                why = "; ".join(x for x in errors.read(4096).decode(errors="replace").splitlines() if x.strip())
                raise CliError(f"mounting {src} on {mountpoint} failed" + (f": {why}" if why else ""), code=ExitCode.IO)
            time.sleep(0.02)
    print(f"qeltrix: mounted {src} on {mountpoint} (pid {pid}); unmount: fusermount3 -u {mountpoint}", file=sys.stderr)


def _serve(src: str, mountpoint: str, keyring: KeyRing, allow_other: bool, log: TextIO | None) -> None:
    from .. import mount as _mount

    # libfuse installs its own SIGINT/SIGTERM/SIGHUP handlers (which unmount and return) only
    # over the default ones; Python's would wait for a main thread that is blocked in libfuse.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        _mount.run(src, mountpoint, keyring, allow_other=allow_other, log=log)
    except RuntimeError as e:
        raise CliError(f"mounting {src} on {mountpoint} failed (libfuse status {e})", code=ExitCode.IO) from None
