"""``qeltrix ls`` and ``get``, and the archive side of ``pack``, ``unpack`` and ``cat``
(docs/FORMAT.md section 16). The archive module is imported inside the commands, so
``qeltrix --help`` does not pay for it."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._app import CliError, ExitCode, app
from ._credentials import (
    READING,
    Credentials,
    ReadingOptions,
    reading_options,
)
from ._options import (
    DebugOpt,
    ForceOpt,
    JsonOpt,
    PassphraseTrap,
    QuietOpt,
    SignerOpt,
    SignersFileOpt,
    _refuse_passphrase_value,
    human_size,
    signers_from_options,
)
from ._output import _check_input, _status, _stdout

if TYPE_CHECKING:
    from ..archive import Archive, Member


def open_cli_archive(
    src: str, creds: Credentials, signers: list[str] | None, allow_incomplete: bool = False
) -> Archive:
    from ..archive import open_archive

    return open_archive(src, **creds.kwargs(), signers=signers, allow_incomplete=allow_incomplete)


def _reading(src: str, reading: ReadingOptions) -> Credentials:
    if src == "-":
        raise CliError("an archive is read by seeking: give its path, not -", code=ExitCode.USAGE)
    _check_input(src)
    return reading.credentials(src)


_TYPE_CHAR = {"file": "-", "dir": "d", "symlink": "l", "hardlink": "h"}


def _long_line(m: Member) -> str:
    mode = _TYPE_CHAR[m.type] + stat.filemode(m.mode)[1:]
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.mtime_ns // 1_000_000_000))
    link = f" -> {m.link}" if m.type == "symlink" else f" link to {m.link}" if m.type == "hardlink" else ""
    return f"{mode} {m.size:>14,} {when} {m.path}{link}"


@app.command("ls", rich_help_panel="Archives")
@reading_options
def ls_(
    src: Annotated[str, typer.Argument(metavar="ARCHIVE", help="Archive to list.")],
    long: Annotated[bool, typer.Option("--long", "-l", help="Type, mode, size, mtime (UTC) and path.")] = False,
    as_json: JsonOpt = False,
    reading: ReadingOptions = READING,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """List the members of an archive. Reads only the member table, whatever the size.

    [bold]Examples[/bold]

      qeltrix ls --key-file my.key backup.qltx
      qeltrix ls --long --key-file my.key backup.qltx
      qeltrix ls --json --key-file my.key backup.qltx | jq '.[].path'
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    creds = _reading(src, reading)
    with open_cli_archive(src, creds, signers) as a:
        members = a.members()
    out = _stdout()
    if as_json:
        out.write(json.dumps([m.as_dict() for m in members], indent=1).encode() + b"\n")
    else:
        lines = (_long_line(m) if long else m.path + ("/" if m.type == "dir" else "") for m in members)
        for line in lines:
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
    out.flush()


@app.command(rich_help_panel="Archives")
@reading_options
def get(
    src: Annotated[str, typer.Argument(metavar="ARCHIVE", help="Archive to read from.")],
    paths: Annotated[list[str], typer.Argument(metavar="MEMBER", help="Members to restore (a directory: its tree).")],
    directory: Annotated[
        str, typer.Option("--directory", "-C", metavar="DIR", help="Restore under DIR (default: here).")
    ] = ".",
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write the one MEMBER to FILE, or - for stdout."),
    ] = None,
    force: ForceOpt = False,
    reading: ReadingOptions = READING,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Restore some members of an archive, reading only their blocks and the member table.

    Members keep their path under -C DIR (like 'tar x -C DIR MEMBER'), with modes, times
    and symlinks. Each file is written atomically; an existing file is replaced only with
    --force. Nothing is ever written outside DIR.

    [bold]Examples[/bold]

      qeltrix get --key-file my.key backup.qltx docs/report.pdf -C restored
      qeltrix get --key-file my.key backup.qltx docs/report.pdf -o - | less
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    if output is not None and len(paths) != 1:
        raise CliError("-o/--output takes exactly one MEMBER", code=ExitCode.USAGE)
    creds = _reading(src, reading)
    with open_cli_archive(src, creds, signers) as a:
        if output == "-":
            write_member_to(a, paths[0], _stdout(), 0, None)
            return
        if output is not None:
            a.extract(paths[0], output, overwrite=force)
            _status(quiet, f"restored {paths[0]} to {output}")
            return
        n = a.extract_all(directory, overwrite=force, paths=paths)
    _status(quiet, f"restored {n} member(s) under {directory}")


def write_member_to(a: Archive, path: str, out: Any, offset: int, length: int | None) -> None:
    """Write ``[offset, offset + length)`` of the member ``path`` to ``out``."""
    with a.open(path) as f:
        end = f.size if length is None else min(f.size, offset + length)
        f.seek(offset)
        pos = offset
        while pos < end:
            data = f.read(min(1 << 20, end - pos))
            if not data:
                break
            out.write(data)
            pos += len(data)
    out.flush()


def cat_member(src: str, member: str, offset: int, length: int | None, creds: Credentials, signers: Any) -> None:
    """``qeltrix cat --member PATH``."""
    if src == "-":
        raise CliError("an archive is read by seeking: give its path, not -", code=ExitCode.USAGE)
    with open_cli_archive(src, creds, signers) as a:
        write_member_to(a, member, _stdout(), offset, length)


def unpack_archive(src: str, dst: str, creds: Credentials, signers: Any, force: bool, quiet: bool) -> None:
    """``qeltrix unpack ARCHIVE DIR``: restore the whole tree."""
    if dst == "-":
        raise CliError(
            "an archive unpacks into a directory, not stdout",
            hint="'qeltrix get ARCHIVE MEMBER -o -' writes one member to stdout",
            code=ExitCode.USAGE,
        )
    with open_cli_archive(src, creds, signers) as a:
        n = a.extract_all(dst, overwrite=force)
    _status(quiet, f"unpacked {n} member(s) of {src} into {dst}")


def pack_archive_cli(srcs: list[str], dst: str, from_tar: str | None, quiet: bool, **kwargs: Any) -> None:
    from ..archive import pack_archive

    out: Any = _stdout() if dst == "-" else dst  # an archive streams out like a container
    for s in srcs:
        if not os.path.lexists(s):
            raise CliError(f"{s}: no such file or directory", code=ExitCode.IO)
    if from_tar is not None:
        if srcs:
            raise CliError("--from-tar takes the tar stream; give no other input", code=ExitCode.USAGE)
        if from_tar == "-":
            result = pack_archive([], out, from_tar=sys.stdin.buffer, **kwargs)
        else:
            with open(from_tar, "rb") as f:
                result = pack_archive([], out, from_tar=f, **kwargs)
    else:
        result = pack_archive(srcs, out, **kwargs)
    for s in result.skipped[:20]:
        typer.echo(f"qeltrix: warning: {s}: not a file, directory or symlink; not archived", err=True)
    if dst == "-":
        out.flush()
    _status(
        quiet,
        f"packed {result.member_count:,} members ({human_size(result.pt_len)}, {result.block_count} blocks) "
        f"into {'stdout' if dst == '-' else dst} ({result.container_len:,} bytes)",
    )


def archive_verify_members(opened: Any) -> Any:
    """For ``verify``: a function naming the members of a plaintext range, or None."""
    from ..archive import HEADER_FLAG_ARCHIVE, Archive

    if not int(opened.reader.header_flags) & HEADER_FLAG_ARCHIVE:
        return None
    try:
        return Archive(opened).members_in
    except Exception:  # the table itself may sit in a damaged block
        return None
