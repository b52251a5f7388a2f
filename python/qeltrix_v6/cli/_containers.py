"""``qeltrix pack``, ``unpack`` and ``cat``."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .. import _core, _crypto
from .._container import open_reader
from .._container import pack as _pack
from .._container import unpack as _unpack
from ._app import CliError, ExitCode, app
from ._credentials import (
    READING,
    ReadingOptions,
    _display,
    _kdf_settings,
    credentials_for_writing,
    kms_config,
    parse_recipient_options,
    reading_options,
)
from ._options import (
    AllowIncompleteOpt,
    CipherName,
    DebugOpt,
    ForceOpt,
    KdfIterationsOpt,
    KdfName,
    KdfOpt,
    KeyFileOpt,
    KmsEndpointOpt,
    KmsTimeoutOpt,
    PassphraseFileOpt,
    PassphraseTrap,
    QuietOpt,
    RecipientOpt,
    RecipientsFileOpt,
    SignerOpt,
    SignersFileOpt,
    SignWithOpt,
    WorkersOpt,
    _refuse_passphrase_value,
    human_size,
    parse_size,
    read_signing_key,
    signers_from_options,
)
from ._output import _check_input, _check_output, _progress, _same_file, _status, _stdin, _stdout


@app.command(rich_help_panel="Containers")
def pack(
    ctx: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="SRC DST",
            help="File to encrypt (- for stdin), or files and directories to archive; then DST (- for stdout).",
        ),
    ],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    from_tar: Annotated[
        str | None,
        typer.Option("--from-tar", metavar="TAR", help="Make an archive of the tar stream TAR (- for stdin)."),
    ] = None,
    cipher: Annotated[
        CipherName, typer.Option("--cipher", help="Block cipher.", case_sensitive=False)
    ] = CipherName.aes,
    block_size: Annotated[
        int,
        typer.Option(
            "--block-size",
            "-b",
            parser=parse_size,
            metavar="SIZE",
            help="Plaintext bytes per block, 16B..64MiB. Smaller: faster random reads; larger: faster bulk.",
        ),
    ] = "256KiB",  # type: ignore[assignment]
    workers: WorkersOpt = None,
    no_permute: Annotated[
        bool, typer.Option("--no-permute", help="Store blocks in plaintext order (no keyed shuffle).")
    ] = False,
    force: ForceOpt = False,
    kdf: KdfOpt = KdfName.argon2id,
    kdf_iterations: KdfIterationsOpt = None,
    recipient: RecipientOpt = None,
    recipients_file: RecipientsFileOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    sign_with: SignWithOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Encrypt SRC into the container DST.

    With --key-file the container opens with that key; with a passphrase (from
    --passphrase-file, $QELTRIX_PASSPHRASE, or asked twice on the terminal) it opens with
    the passphrase. Give --key-file and --passphrase-file together for both. With
    --recipient/--recipients-file it is sealed to public keys (X25519, RSA, KMS) and needs
    no secret at all: a machine holding only public keys can pack what it cannot read
    (no passphrase is asked for then). DST is written atomically: it appears only once
    complete, and never replaces an existing file without --force.

    [bold]Examples[/bold]

      qeltrix keygen -o my.key
      qeltrix pack --key-file my.key movie.mp4 movie.qltx
      qeltrix pack --recipient qltx-x25519:AbC... --recipient ops-rsa.pub.pem db.dump db.qltx
      qeltrix pack --passphrase-file pw.txt --block-size 1MiB backup.tar backup.qltx
      tar c docs | qeltrix pack --key-file my.key - - > docs.tar.qltx
      qeltrix pack --sign-with me.sign --recipient qltx-x25519:AbC... db.dump db.qltx

    Several inputs, a directory or --from-tar make an [bold]archive[/bold] (docs/FORMAT.md
    section 16): one member per file, each restored alone with 'qeltrix get'.

      qeltrix pack --key-file my.key docs photos backup.qltx
      tar c docs | qeltrix pack --key-file my.key --from-tar - docs.qltx
    """
    _refuse_passphrase_value(passphrase)
    if len(paths) < (1 if from_tar is not None else 2):
        raise CliError("give SRC and DST (or --from-tar TAR and DST)", code=ExitCode.USAGE)
    *srcs, dst = paths
    # Several inputs, a directory or a tar stream make an archive (the archive code, and json
    # with it, is imported only then: a few ms of every single-file pack).
    archive = from_tar is not None or len(srcs) != 1 or (srcs[0] != "-" and os.path.isdir(srcs[0]))
    src = srcs[0] if srcs else "-"
    if not _core.MIN_BLOCK_SIZE <= block_size <= _core.MAX_BLOCK_SIZE:
        raise CliError(
            f"--block-size must be between {_core.MIN_BLOCK_SIZE} bytes and {human_size(_core.MAX_BLOCK_SIZE)}, "
            f"not {block_size}",
            code=ExitCode.USAGE,
        )
    if not archive:
        _check_input(src)
    _check_output(dst, force)
    if dst == "-" and sys.stdout.isatty() and not force:
        raise CliError(
            "refusing to write a binary container to the terminal",
            hint="redirect stdout to a file or a pipe, or give DST",
            code=ExitCode.USAGE,
        )
    if src != "-" and dst != "-" and os.path.lexists(dst) and _same_file(src, dst):
        raise CliError("SRC and DST are the same file", code=ExitCode.USAGE)
    public = parse_recipient_options(recipient, recipients_file)
    if (recipient or recipients_file) and not public:
        raise CliError("the recipients file lists no recipient", code=ExitCode.USAGE)
    signer = read_signing_key(sign_with)
    creds = credentials_for_writing(key_file, passphrase_file, dst, recipients=bool(public))
    kdf_name, kdf_params = _kdf_settings(kdf, kdf_iterations, has_passphrase=creds.passphrase is not None, ctx=ctx)
    kms = kms_config(kms_endpoint, kms_timeout) if any(r.kind == _crypto.KIND_KMS for r in public) else None
    if archive:
        from ._archive import pack_archive_cli

        with _progress(not quiet, "packing", None) as progress:
            pack_archive_cli(
                srcs,
                dst,
                from_tar,
                quiet,
                **creds.kwargs(),
                cipher=cipher.value,
                block_size=block_size,
                workers=workers,
                permute=not no_permute,
                progress=progress,
                kdf=kdf_name,
                kdf_params=kdf_params,
                overwrite=force,
                recipients=public,
                kms=kms,
                sign_with=signer,
            )
        return
    total = None if src == "-" else os.path.getsize(src)
    with _progress(not quiet, "packing", total) as progress:
        result = _pack(
            _stdin() if src == "-" else src,
            _stdout() if dst == "-" else dst,
            **creds.kwargs(),
            cipher=cipher.value,
            block_size=block_size,
            workers=workers,
            permute=not no_permute,
            progress=progress,
            kdf=kdf_name,  # type: ignore[arg-type]
            kdf_params=kdf_params,
            overwrite=force,
            recipients=public,
            kms=kms,
            sign_with=signer,
        )
    if dst == "-":
        _stdout().flush()
    _status(
        quiet,
        f"packed {_display(src)} ({human_size(result.pt_len)}, {result.block_count} blocks) "
        f"into {'stdout' if dst == '-' else dst} ({result.container_len:,} bytes)",
    )


@app.command(rich_help_panel="Containers")
@reading_options
def unpack(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to decrypt, or - for stdin.")],
    dst: Annotated[str, typer.Argument(metavar="DST", help="File to write, or - for stdout.")],
    reading: ReadingOptions = READING,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    allow_incomplete: AllowIncompleteOpt = False,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Decrypt the container SRC into DST, authenticating every block.

    A file DST appears only when every block has been authenticated; on any error (wrong
    key, tampering, Ctrl-C) no output file is left behind. Writing to stdout streams: the
    blocks before a damaged one have already been written, so check the exit code.

    [bold]Examples[/bold]

      qeltrix unpack --key-file my.key movie.qltx movie.mp4
      qeltrix unpack backup.qltx - | tar x        # asks for the passphrase
      qeltrix unpack --identity me.id db.qltx db.dump
      qeltrix unpack --identity me.id --signer qltx-ed25519:XyZ... db.qltx db.dump

    An INCOMPLETE container (a gateway stream cut before its end) fails with exit code 5
    before anything is written; --allow-incomplete restores what authenticated, with a warning.

    An [bold]archive[/bold] unpacks into the directory DST: the whole tree, with modes, times,
    symlinks and hard links, never writing outside DST (existing files only with --force).

      qeltrix unpack --key-file my.key backup.qltx restored/
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    _check_input(src)
    from ..archive import is_archive_file

    if src != "-" and is_archive_file(src):
        from ._archive import unpack_archive

        creds = reading.credentials(src)
        unpack_archive(src, dst, creds, signers, force, quiet)
        return
    _check_output(dst, force)
    if src == "-" and sys.stdin.isatty():
        raise CliError(
            "refusing to read a container from the terminal", hint="pipe or redirect it", code=ExitCode.USAGE
        )
    creds = reading.credentials(src)
    total = None
    with _progress(not quiet, "unpacking", total) as progress:
        _unpack(
            _stdin() if src == "-" else src,
            _stdout() if dst == "-" else dst,
            **creds.kwargs(),
            workers=workers,
            progress=progress,
            overwrite=force,
            allow_incomplete=allow_incomplete,
            signers=signers,
        )
    if dst == "-":
        _stdout().flush()
    _status(quiet, f"unpacked {_display(src)} into {'stdout' if dst == '-' else dst}")


@app.command(rich_help_panel="Containers")
@reading_options
def cat(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to read from.")],
    offset: Annotated[
        int, typer.Option("--offset", parser=parse_size, metavar="SIZE", help="First plaintext byte.")
    ] = 0,
    length: Annotated[
        int | None,
        typer.Option("--length", parser=parse_size, metavar="SIZE", help="Bytes to write (default: to the end)."),
    ] = None,
    member: Annotated[
        str | None,
        typer.Option("--member", "-m", metavar="PATH", help="Read the archive member PATH (offsets within it)."),
    ] = None,
    reading: ReadingOptions = READING,
    allow_incomplete: AllowIncompleteOpt = False,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Write the plaintext bytes [offset, offset+length) of SRC (or of its archive member
    --member PATH) to stdout.

    Only the blocks that cover the range are read and decrypted, so reading 64 KiB from
    the middle of a 100 GiB container takes milliseconds. A range past the end is clipped,
    like reading a file: it may be shorter than --length, or empty; in an INCOMPLETE container
    (a cut stream) such a range fails with exit code 5 unless --allow-incomplete.

    [bold]Examples[/bold]

      qeltrix cat --key-file my.key movie.qltx --offset 200MiB --length 1MiB > part.bin
      qeltrix cat --key-file my.key logs.qltx --offset 1GiB | head -n 20
      qeltrix cat --key-file my.key backup.qltx --member docs/a.log --offset 1KiB
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    _check_input(src)
    creds = reading.credentials(src)
    if member is not None:
        from ._archive import cat_member

        cat_member(src, member, offset, length, creds, signers)
        return
    opened = open_reader(
        _stdin() if src == "-" else src,
        **creds.kwargs(),
        allow_incomplete=allow_incomplete,
        signers=signers,
        whole=offset == 0 and length is None,  # all of it, in order: streamed from the open on
    )
    out = _stdout()
    try:
        r = opened.reader
        total = int(r.pt_total_len)
        end = total if length is None else min(total, offset + length)
        # Reading to the end of an incomplete container fails here, before any output.
        opened.check_end(offset, max(1, total - offset + 1) if length is None else length)
        chunk = max(int(r.block_size), 1 << 20)
        # Read in order to the end: from object storage, one streamed GET.
        if end > offset:
            r.read_ahead(offset, end - offset)
        # Chunks aligned to block boundaries decrypt every block once.
        pos = offset
        while pos < end:
            stop = min(end, (pos // chunk + 1) * chunk)
            out.write(r.read_at(pos, stop - pos))
            pos = stop
        out.flush()
    finally:
        opened.close()
