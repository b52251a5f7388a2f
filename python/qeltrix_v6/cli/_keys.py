"""``qeltrix keygen``, ``passwd``, ``recipients`` and ``rotate``."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Annotated, Any

import typer

from .. import _crypto, _signing, _store
from .._pubkeys import encode_public_key
from .._recipients import (
    RecipientChange,
    recipient_summary,
    rewrite_recipients,
    rotate,
)
from ..errors import (
    AuthenticationError,
)
from ._app import HELP_OPTION_NAMES, KEY_FILE_LEN, NEW_PASSPHRASE_ENV, CliError, ExitCode, app
from ._credentials import (
    READING,
    ReadingOptions,
    _can_prompt,
    _env_passphrase,
    _kdf_settings,
    _prompt_passphrase,
    _stanza_kinds,
    credentials_for_reading,
    kms_config,
    parse_recipient_options,
    read_key_file,
    read_passphrase_file,
    reading_options,
)
from ._inspect import _public_info
from ._options import (
    DebugOpt,
    IdentityOpt,
    JsonOpt,
    KdfIterationsOpt,
    KdfName,
    KdfOpt,
    KeyFileOpt,
    PassphraseFileOpt,
    PassphraseTrap,
    QuietOpt,
    RecipientOpt,
    RecipientsFileOpt,
    SignWithOpt,
    WorkersOpt,
    _refuse_passphrase_value,
    read_signing_key,
)
from ._output import _check_input, _progress, _status


@app.command(rich_help_panel="Keys")
def keygen(
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="FILE", help="Where to write the new key (must not exist).")
    ],
    x25519: Annotated[
        bool,
        typer.Option("--x25519", help="Write a gateway identity (X25519 private key) and print its public key."),
    ] = False,
    ed25519: Annotated[
        bool,
        typer.Option(
            "--ed25519", help="Write a signing key (Ed25519, PEM) for 'pack --sign-with' and print its public key."
        ),
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a new random 32-byte key to FILE, readable only by you (mode 0600).

    Never overwrites an existing file. Keep the key secret and backed up: whoever has it
    opens every container packed with it, and without it those containers are lost.
    With --x25519, FILE is a gateway identity and its public key (to pin on the peer
    gateways with --peer) is printed on stdout.

    [bold]Examples[/bold]

      qeltrix keygen -o my.key
      qeltrix pack --key-file my.key secrets.db secrets.qltx
      qeltrix keygen --x25519 -o gw-a.id > gw-a.pub
      qeltrix keygen --ed25519 -o me.sign > me.signer     # readers pin it with --signer
    """
    if output == "-":
        raise CliError("keygen writes a key file, not stdout", hint="give -o FILE", code=ExitCode.USAGE)
    if x25519 and ed25519:
        raise CliError("--x25519 and --ed25519 make different keys; choose one", code=ExitCode.USAGE)
    if ed25519:
        pem, signer_pub = _crypto.ed25519_generate()
        write_key_file(output, pem)
        typer.echo(_signing.encode_signer(signer_pub))
        _status(quiet, f"wrote a new signing key to {output} (mode 0600); its public key (for --signer) is above")
        return
    if x25519:
        private, public = _crypto.x25519_generate()
        write_key_file(output, private)
        typer.echo(encode_public_key(public))
        _status(quiet, f"wrote a new gateway identity to {output} (mode 0600); its public key is above")
        return
    write_key_file(output, _crypto.random_bytes(KEY_FILE_LEN))
    _status(quiet, f"wrote a new key to {output} (mode 0600); keep it secret and backed up")


def write_key_file(path: str, key: bytes) -> None:
    """Create ``path`` holding ``key``, mode 0600, atomically, refusing to overwrite anything."""
    if os.path.lexists(path):
        raise CliError(f"{path} already exists; refusing to overwrite a key file", code=ExitCode.IO)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".qeltrix-tmp")
    except FileNotFoundError:
        raise CliError(f"{parent}: no such directory", code=ExitCode.IO) from None
    except OSError as e:
        raise CliError(f"cannot create a file in {parent}: {e.strerror}", code=ExitCode.IO) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)  # fails if path exists: no overwrite, even in a race
        except FileExistsError:
            raise CliError(f"{path} already exists; refusing to overwrite a key file", code=ExitCode.IO) from None
        except OSError:  # a file system without hard links: exclusive create instead
            _write_key_exclusive(path, key)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_key_exclusive(path: str, key: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} already exists; refusing to overwrite a key file", code=ExitCode.IO) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


@app.command(rich_help_panel="Keys")
def passwd(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container whose recipients change (in place).")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    new_passphrase_file: Annotated[
        str | None,
        typer.Option(
            "--new-passphrase-file",
            metavar="FILE",
            help=f"The new passphrase (first line). Else ${NEW_PASSPHRASE_ENV}, else asked twice.",
            rich_help_panel="Changes",
        ),
    ] = None,
    add_key_file: Annotated[
        list[str] | None,
        typer.Option("--add-key-file", metavar="FILE", help="Add a key-file recipient.", rich_help_panel="Changes"),
    ] = None,
    remove_key_file: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-key-file",
            metavar="FILE",
            help="Remove the recipient of this key file.",
            rich_help_panel="Changes",
        ),
    ] = None,
    remove_passphrase: Annotated[
        bool,
        typer.Option("--remove-passphrase", help="Remove the passphrase recipient.", rich_help_panel="Changes"),
    ] = False,
    kdf: KdfOpt = KdfName.argon2id,
    kdf_iterations: KdfIterationsOpt = None,
    identity: IdentityOpt = None,
    sign_with: SignWithOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Change the passphrase of SRC, or add or remove key-file recipients.

    Only the header is rewritten, in place; the blocks are not touched, so this is instant
    for any size. On s3://BUCKET/KEY the server copies the unchanged bytes (UploadPartCopy;
    needs boto3), and the change fails if another writer replaced the object meanwhile.
    Open SRC with its current key (--key-file, --passphrase-file,
    $QELTRIX_PASSPHRASE or the prompt). Without --add-key-file, --remove-key-file or
    --remove-passphrase, the passphrase is changed (or set, if SRC has none).

    The master key does not change: a copy of SRC made earlier still opens with the old
    passphrase. To revoke a credential for good, unpack and pack again.

    A signed SRC is refused (nothing changes) unless --sign-with KEY_FILE signs it again.

    [bold]Examples[/bold]

      qeltrix passwd backup.qltx
      qeltrix passwd --passphrase-file old.txt --new-passphrase-file new.txt backup.qltx
      qeltrix passwd --passphrase-file old.txt --add-key-file my.key backup.qltx
      qeltrix passwd --key-file my.key --remove-key-file old.key backup.qltx
    """
    _refuse_passphrase_value(passphrase)
    if src == "-":
        raise CliError("passwd rewrites a file in place; it cannot work on stdin", code=ExitCode.USAGE)
    _check_input(src)
    add_keys = [read_key_file(p) for p in add_key_file or []]
    remove_keys = [read_key_file(p) for p in remove_key_file or []]
    other_changes = bool(add_keys or remove_keys or remove_passphrase)
    if new_passphrase_file and remove_passphrase:
        raise CliError("--new-passphrase-file and --remove-passphrase contradict each other", code=ExitCode.USAGE)
    creds = credentials_for_reading(src, key_file, passphrase_file, identity_files=identity)
    new_pw: str | None = None
    if new_passphrase_file:
        new_pw = read_passphrase_file(new_passphrase_file)
    elif not other_changes:
        new_pw = _env_passphrase(NEW_PASSPHRASE_ENV)
        if new_pw is None:
            if not _can_prompt():
                raise CliError(
                    f"no new passphrase given for {src}, and no terminal to ask for one",
                    hint=f"use --new-passphrase-file FILE or set {NEW_PASSPHRASE_ENV}",
                    code=ExitCode.USAGE,
                )
            new_pw = _prompt_passphrase("New passphrase: ", confirm="Confirm new passphrase: ", what=src)
    kdf_name, kdf_params = _kdf_settings(kdf, kdf_iterations, has_passphrase=new_pw is not None, ctx=ctx)
    change = RecipientChange(
        new_passphrase=new_pw,
        kdf=kdf_name,
        kdf_params=kdf_params,
        remove_passphrase=remove_passphrase,
        add_keys=add_keys,
        remove_keys=remove_keys,
    )
    result = rewrite_recipients(src, change, **creds.kwargs(), sign_with=read_signing_key(sign_with))
    summary = ", ".join(recipient_summary(d) for d in result.after)
    _status(quiet, f"updated {src}: recipients now {summary}")


# --- recipients and rotation ----------------------------------------------------------------

recipients_app = typer.Typer(
    help="List, add and remove the recipients of a container (header only; blocks untouched).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": HELP_OPTION_NAMES},
)
app.add_typer(recipients_app, name="recipients", rich_help_panel="Keys")


def _in_place_target(src: str, what: str) -> None:
    if src == "-":
        raise CliError(f"{what} rewrites a file in place; it cannot work on stdin", code=ExitCode.USAGE)
    _check_input(src)


@recipients_app.command("list")
def recipients_list(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container whose recipients to list.")],
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the recipients of SRC from its public header (no key needed).

    Public-key recipients are printed as 'recipients remove' takes them: qltx-x25519:...,
    rsa:SHA256:<fingerprint of the DER public key>, kms:<key ARN>.

    [bold]Examples[/bold]

      qeltrix recipients list db.qltx
      qeltrix recipients list --json db.qltx | jq -r '.[].recipient // empty'
    """
    if src == "-":
        raise CliError("recipients list needs a file, not stdin", code=ExitCode.USAGE)
    _check_input(src)
    public = _public_info(src)
    if not public["header_checksum_ok"]:
        raise AuthenticationError("container header is corrupt (checksum mismatch)")
    descs = public["recipients"]
    if as_json:
        typer.echo(json.dumps(descs, indent=2))
        return
    for i, d in enumerate(descs, 1):
        typer.echo(f"{i}. {d['kind']:<9} {d.get('recipient') or recipient_summary(d)}")


@recipients_app.command("add")
@reading_options
def recipients_add(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to change (in place).")],
    recipient: RecipientOpt = None,
    recipients_file: RecipientsFileOpt = None,
    reading: ReadingOptions = READING,
    sign_with: SignWithOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Seal the MK of SRC to more public keys (X25519, RSA, KMS), rewriting only the header.

    Opening SRC needs one of its current credentials (--key-file, --passphrase-file,
    --identity, KMS access). Instant for any container size: no block is read or written
    (on s3:// the server copies them: UploadPartCopy, conditional on the object's ETag).

    [bold]Examples[/bold]

      qeltrix recipients add --identity me.id --recipient qltx-x25519:AbC... db.qltx
      qeltrix recipients add --key-file my.key --recipient ops.pub.pem --recipient kms:alias/backup db.qltx
    """
    _refuse_passphrase_value(passphrase)
    _in_place_target(src, "recipients add")
    public = parse_recipient_options(recipient, recipients_file)
    if not public:
        raise CliError("nothing to add", hint="give --recipient PUBKEY or --recipients-file FILE", code=ExitCode.USAGE)
    creds = reading.credentials(src)
    kms = (
        kms_config(reading.kms_endpoint, reading.kms_timeout)
        if any(r.kind == _crypto.KIND_KMS for r in public)
        else None
    )
    result = rewrite_recipients(
        src,
        RecipientChange(add_recipients=public, kms=kms),
        **creds.kwargs(),
        sign_with=read_signing_key(sign_with),
    )
    _status(quiet, f"updated {src}: {len(result.after)} recipients")


@recipients_app.command("remove")
@reading_options
def recipients_remove(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to change (in place).")],
    recipient: Annotated[
        list[str],
        typer.Option(
            "--recipient",
            "-r",
            metavar="PUBKEY",
            help="Recipient to remove, as 'recipients list' prints it (or a PEM public key file). Repeatable.",
        ),
    ],
    reading: ReadingOptions = READING,
    sign_with: SignWithOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Remove public-key recipients from SRC, rewriting only the header.

    The MK does not change: a copy of SRC made earlier still opens with the removed key.
    To revoke it for good, run 'qeltrix rotate' afterwards.

    [bold]Examples[/bold]

      qeltrix recipients remove --key-file my.key --recipient qltx-x25519:AbC... db.qltx
      qeltrix recipients remove --identity me.id --recipient rsa:SHA256:9f2c... db.qltx
    """
    _refuse_passphrase_value(passphrase)
    _in_place_target(src, "recipients remove")
    targets: list[Any] = []
    for value in recipient:
        if os.path.isfile(value):
            targets += parse_recipient_options([value], None)
        else:
            targets.append(value.strip())
    creds = reading.credentials(src)
    result = rewrite_recipients(
        src, RecipientChange(remove_recipients=targets), **creds.kwargs(), sign_with=read_signing_key(sign_with)
    )
    _status(quiet, f"updated {src}: {len(result.after)} recipients")


@app.command("rotate", rich_help_panel="Keys")
@reading_options
def rotate_cmd(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to re-encrypt (replaced atomically).")],
    reading: ReadingOptions = READING,
    recipient: RecipientOpt = None,
    recipients_file: RecipientsFileOpt = None,
    drop_missing: Annotated[
        bool,
        typer.Option(
            "--drop-missing",
            help="Drop the passphrase and key-file recipients whose secret was not given (else refuse).",
        ),
    ] = False,
    workers: WorkersOpt = None,
    sign_with: SignWithOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Re-encrypt SRC under a fresh master key, keeping its recipients.

    Every block is decrypted and encrypted again, streaming (bounded memory), into a new
    file beside SRC that replaces it only when complete. Afterwards the old MK, old headers
    and credentials removed earlier open nothing in SRC. Public-key and KMS recipients are
    kept from the public keys stored in the header; a passphrase or key-file recipient is
    kept only if you give that passphrase or key (a secret cannot be read back from the
    header): give them, or --drop-missing to drop the others. --recipient adds recipients.
    A signed SRC is refused unless --sign-with KEY_FILE signs the rotated one (its old
    signature is checked on every block); an unsigned SRC rotated with --sign-with is signed.

    [bold]Examples[/bold]

      qeltrix recipients remove --identity me.id --recipient qltx-x25519:OLD... db.qltx
      qeltrix rotate --identity me.id db.qltx
      qeltrix rotate --passphrase-file pw.txt --key-file my.key backup.qltx
    """
    _refuse_passphrase_value(passphrase)
    _in_place_target(src, "rotate")
    public = parse_recipient_options(recipient, recipients_file)
    signer = read_signing_key(sign_with)
    creds = reading.credentials(src)
    if creds.kms is None and (kinds := _stanza_kinds(src)) and _crypto.KIND_KMS in kinds:
        creds.kms = kms_config(reading.kms_endpoint, reading.kms_timeout)  # needed to re-wrap for the KMS recipient
    if creds.kms is None and any(r.kind == _crypto.KIND_KMS for r in public):
        creds.kms = kms_config(reading.kms_endpoint, reading.kms_timeout)
    total = None if _store.is_url(src) else os.path.getsize(src)
    with _progress(not quiet, "rotating", total) as progress:
        result = rotate(
            src,
            **creds.kwargs(),
            drop_missing=drop_missing,
            add_recipients=public,
            workers=workers,
            progress=progress,
            sign_with=signer,
        )
    dropped = f"; dropped {len(result.dropped)}" if result.dropped else ""
    _status(
        quiet,
        f"rotated {src}: {result.block_count} blocks re-encrypted under a new master key, "
        f"{len(result.kept) + len(public)} recipients kept or added{dropped}",
    )
