"""``qeltrix info`` and ``qeltrix verify``."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, NoReturn

import typer

from .. import _core, _crypto, _signing
from .._container import incomplete_message, open_reader, public_reader
from .._recipients import (
    describe_stanza,
    recipient_summary,
)
from ..errors import (
    AuthenticationError,
    IntegrityError,
    MalformedError,
    QeltrixError,
    QeltrixIOError,
    SignatureError,
    TruncatedError,
    WrongKeyError,
)
from ._app import CliError, ExitCode, app
from ._credentials import (
    READING,
    Credentials,
    ReadingOptions,
    _explicit_credentials,
    credentials_for_reading,
    reading_options,
)
from ._options import (
    PANEL_KEY,
    AllowIncompleteOpt,
    DebugOpt,
    IdentityOpt,
    JsonOpt,
    KeyFileOpt,
    PassphraseFileOpt,
    PassphraseTrap,
    QuietOpt,
    SignerOpt,
    SignersFileOpt,
    WorkersOpt,
    _refuse_passphrase_value,
    human_size,
    signers_from_options,
)
from ._output import _check_input, _progress, _stdin


def _public_info(src: str) -> dict[str, Any]:
    with public_reader(src) as r:
        checksum_ok = _crypto.sha256(r.header_checksummed) == r.header_sha256
        cipher_names = {v: k for k, v in _crypto.CIPHERS.items()}
        return {
            "file": src,
            "format_version": int(r.format_version),
            "cipher": cipher_names.get(int(r.cipher_id), f"unknown ({r.cipher_id})"),
            "cipher_id": int(r.cipher_id),
            "block_size": int(r.block_size),
            "permuted": bool(r.perm_window),
            "archive": bool(int(r.header_flags) & _core.HEADER_FLAG_ARCHIVE),
            "perm_window": int(r.perm_window),
            "container_id": bytes(r.container_id).hex(),
            "header_len": int(r.header_len),
            "file_len": int(r.file_len),
            "header_checksum_ok": checksum_ok,
            "recipients": [describe_stanza(int(k), bytes(b)) for k, b in r.stanzas],
        }


def _private_info(src: str, creds: Credentials, with_blocks: bool, signers: list[str] | None = None) -> dict[str, Any]:
    opened = open_reader(src, **creds.kwargs(), signers=signers)
    try:
        r = opened.reader
        n = int(r.block_count)
        lens = []
        frames = []
        blocks = []
        for i in range(n):
            pt_offset, pt_len, frame_offset = r.block_info(i)
            lens.append(int(pt_len))
            frames.append(int(frame_offset))
            if with_blocks:
                blocks.append(
                    {"block": i, "pt_offset": int(pt_offset), "pt_len": int(pt_len), "frame_offset": int(frame_offset)}
                )
        out: dict[str, Any] = {
            "plaintext_len": int(r.pt_total_len),
            "block_count": n,
            "complete": not bool(r.incomplete),
            "index": {
                "min_block_len": min(lens) if lens else None,
                "max_block_len": max(lens) if lens else None,
                "short_blocks": sum(1 for x in lens if x < int(r.block_size)),
                "first_frame_offset": min(frames) if frames else None,
                "last_frame_offset": max(frames) if frames else None,
                "in_plaintext_order": frames == sorted(frames),
            },
        }
        if with_blocks:
            out["blocks"] = blocks
        return out
    finally:
        opened.close()


def _print_info(info: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = [
        ("file", info["file"]),
        (
            "format",
            f"Qeltrix V6, version {info['format_version']}"
            + (" (archive: 'qeltrix ls' lists its members)" if info["archive"] else ""),
        ),
        ("cipher", info["cipher"]),
        ("block size", f"{human_size(info['block_size'])} ({info['block_size']:,} bytes)"),
        (
            "placement",
            f"permuted in windows of {info['perm_window']} blocks" if info["permuted"] else "plaintext order",
        ),
        ("container id", info["container_id"]),
        ("header", f"{info['header_len']:,} bytes, checksum {'ok' if info['header_checksum_ok'] else 'MISMATCH'}"),
        ("file size", f"{info['file_len']:,} bytes ({human_size(info['file_len'])})"),
    ]
    recipients = info["recipients"]
    for i, desc in enumerate(recipients):
        rows.append(("recipients" if i == 0 else "", f"{i + 1}. {recipient_summary(desc)}"))
    if "origin" in info:
        rows.append(("origin", info["origin"]["text"]))
    if "plaintext_len" in info:
        ix = info["index"]
        rows += [
            ("plaintext", f"{info['plaintext_len']:,} bytes ({human_size(info['plaintext_len'])})"),
            ("blocks", f"{info['block_count']:,}" + ("" if info["complete"] else " (INCOMPLETE: recovered stream)")),
        ]
        if info["block_count"]:
            rows += [
                (
                    "block lengths",
                    f"{ix['min_block_len']:,} to {ix['max_block_len']:,} bytes, {ix['short_blocks']} short",
                ),
                (
                    "frames",
                    f"offsets {ix['first_frame_offset']:,} to {ix['last_frame_offset']:,}, "
                    + ("stored in plaintext order" if ix["in_plaintext_order"] else "stored out of plaintext order"),
                ),
            ]
    else:
        rows.append(("", "(give a key for the plaintext length and the index)"))
    width = max(len(k) for k, _ in rows) + 2
    for k, v in rows:
        typer.echo(f"{k:<{width}}{v}")
    for b in info.get("blocks", []):
        typer.echo(
            f"  block {b['block']:>6}  pt {b['pt_offset']:>14,} +{b['pt_len']:<10,} frame at {b['frame_offset']:,}"
        )


@app.command(rich_help_panel="Inspect")
def info(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to describe.")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    prompt: Annotated[
        bool, typer.Option("--prompt", help="Ask for the passphrase on the terminal.", rich_help_panel=PANEL_KEY)
    ] = False,
    as_json: JsonOpt = False,
    blocks: Annotated[bool, typer.Option("--blocks", help="List every block of the index (needs a key).")] = False,
    identity: IdentityOpt = None,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Show the public header of SRC; with a key, also its index.

    Without any key: format version, cipher, block size, placement, recipients (and their
    KDF parameters) and sizes. With --key-file, --passphrase-file, $QELTRIX_PASSPHRASE or
    --prompt: also the plaintext length, block count and an index summary.

    [bold]Examples[/bold]

      qeltrix info movie.qltx
      qeltrix info --key-file my.key --json movie.qltx | jq .plaintext_len
      qeltrix info --signer qltx-ed25519:XyZ... movie.qltx    # checks the signature, no key needed
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    if src == "-":
        raise CliError("info needs a file, not stdin", code=ExitCode.USAGE)
    _check_input(src)
    public = _public_info(src)
    if not public["header_checksum_ok"]:
        raise AuthenticationError("container header is corrupt (checksum mismatch)")
    # The signature is checked from public bytes (no key): header, index and frame digests.
    origin = _signing.public_origin(src, _signing.parse_signers(signers))
    public["origin"] = {**origin.as_json(), "text": origin.text()}
    if signers is not None:
        _signing.require_signed_flag(_core.HEADER_FLAG_SIGNED if origin.signed else 0)
        if not origin.valid:
            raise SignatureError("the container's signature does not verify: changed after signing, or forged")
        if not origin.pinned:
            raise SignatureError(f"the container is signed by {origin.signer}, which is not a required signer")
    creds = _explicit_credentials(key_file, passphrase_file, identity)
    if not creds.given() and prompt:
        creds = credentials_for_reading(src, None, None)
    if blocks and not creds.given():
        raise CliError(
            "--blocks needs a key", hint="add --key-file FILE or --passphrase-file FILE", code=ExitCode.USAGE
        )
    data = dict(public)
    data["unlocked"] = creds.given()
    if creds.given():
        data.update(_private_info(src, creds, blocks, signers))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        _print_info(data)


_ERROR_KINDS = (
    (WrongKeyError, "wrong_key"),
    (TruncatedError, "truncated"),
    (IntegrityError, "corrupt"),
    (MalformedError, "malformed"),
    (QeltrixIOError, "io"),
)


def _error_kind(e: BaseException) -> str:
    for cls, name in _ERROR_KINDS:
        if isinstance(e, cls):
            return name
    return "error"


@app.command(rich_help_panel="Inspect")
@reading_options
def verify(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to check.")],
    reading: ReadingOptions = READING,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    allow_incomplete: AllowIncompleteOpt = False,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Authenticate every byte of SRC: header, index and every block.

    Exits 0 only if everything checks out. On failure it names the first bad block and the
    plaintext byte range it covers (and, with --json, every bad block), so the rest can
    still be read with 'qeltrix cat'. An INCOMPLETE container (a stream cut before its FINAL
    frame) fails with exit code 5 even when every block present authenticates, unless
    --allow-incomplete. Nothing is written anywhere.

    [bold]Examples[/bold]

      qeltrix verify --key-file my.key movie.qltx
      qeltrix verify --key-file my.key --json movie.qltx
      qeltrix verify --identity me.id --signer qltx-ed25519:XyZ... db.qltx

    Integrity (under the container's key) and origin (who wrote it) are reported apart:
    without --signer anyone holding a recipient's public key could have written SRC, and
    verify says so; with --signer a container not signed by one of those keys fails.
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    _check_input(src)
    creds = reading.credentials(src)
    result: dict[str, Any] = {"file": src, "ok": False}

    def fail(e: BaseException) -> NoReturn:
        if as_json:
            result.update(error=_error_kind(e), message=str(e))
            result.setdefault("first_bad_block", None)
            typer.echo(json.dumps(result, indent=2))
        raise e

    try:
        opened = open_reader(_stdin() if src == "-" else src, **creds.kwargs(), signers=signers)
    except QeltrixError as e:
        fail(e)
    try:
        r = opened.reader
        origin = _signing.check_signature(r, _signing.parse_signers(signers))
        result["origin"] = {**origin.as_json(), "text": origin.text()}
        if origin.signed and not origin.valid:
            fail(SignatureError("the container's signature does not verify: changed after signing, or forged"))
        if origin.valid and not r.frame_digests_required:
            r.require_frame_digests()  # "valid" then also covers every frame read below
        n, total = int(r.block_count), int(r.pt_total_len)
        result.update(block_count=n, plaintext_len=total, complete=not bool(r.incomplete))
        first_error: BaseException | None = None
        with _progress(not quiet, "verifying", total) as progress, open(os.devnull, "wb") as sink:
            try:
                r.unpack_to(sink.fileno(), workers, progress)
            except IntegrityError as e:
                first_error = e
            except QeltrixError as e:
                fail(e)
        if first_error is None and r.incomplete:
            # Every block present authenticates, but the end is missing: never "OK".
            message = incomplete_message(src, n, total)
            if not allow_incomplete:
                result.update(error="truncated", message=message)
                if as_json:
                    typer.echo(json.dumps(result, indent=2))
                raise CliError(
                    message,
                    hint="'qeltrix unpack --allow-incomplete' restores what is there",
                    code=ExitCode.TRUNCATED,
                )
            typer.echo(f"qeltrix: warning: {message}", err=True)
        if first_error is None:
            result["ok"] = True
            if as_json:
                typer.echo(json.dumps(result, indent=2))
            else:
                completeness = (
                    "INCOMPLETE (allowed by --allow-incomplete): a stream cut before its FINAL frame"
                    if r.incomplete
                    else "complete: the data ends where its writer's input ended"
                )
                typer.echo(f"{src}: OK: {n:,} blocks, {total:,} bytes of plaintext authenticated")
                typer.echo("  integrity: authenticated under the container's key")
                typer.echo(f"  completeness: {completeness}")
                typer.echo(f"  origin: {origin.text()}")
            return
        # The parallel scan stops at a failure that is not necessarily the first: rescan in order.
        bad: list[dict[str, Any]] = []
        bad_count = 0
        for i in range(n):
            try:
                r.read_block(i)
            except IntegrityError as e:
                pt_offset, pt_len, _ = r.block_info(i)
                bad_count += 1
                if len(bad) < 1000:
                    bad.append(
                        {
                            "block": i,
                            "pt_offset": int(pt_offset),
                            "pt_len": int(pt_len),
                            "pt_end": int(pt_offset) + int(pt_len),
                            "error": _error_kind(e),
                            "message": str(e),
                        }
                    )
        if not bad:  # a transient failure the rescan did not reproduce: report it as is
            fail(first_error)
        from ._archive import archive_verify_members

        members_in = archive_verify_members(opened)  # an archive: name the members hit
        if members_in is not None:
            for b in bad:
                b["members"] = members_in(b["pt_offset"], b["pt_len"])
        first = bad[0]
        result.update(
            error=first["error"],
            bad_block_count=bad_count,
            first_bad_block=first,
            bad_blocks=bad,
            message=first["message"],
        )
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        code = ExitCode.TRUNCATED if first["error"] == "truncated" else ExitCode.CORRUPT
        where = f"{src}: block {first['block']} (plaintext bytes {first['pt_offset']}-{first['pt_end'] - 1})"
        reason = first["message"]
        prefix = f"block {first['block']} "
        what = f"{where} {reason.removeprefix(prefix)}" if reason.startswith(prefix) else f"{where}: {reason}"
        if first.get("members"):
            names = first["members"]
            what += f"; members: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
        raise CliError(
            what,
            hint=f"damaged blocks: {bad_count} of {n}; the others can still be read with 'qeltrix cat'",
            code=code,
        )
    finally:
        opened.close()
