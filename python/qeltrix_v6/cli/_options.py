"""Sizes and the options several commands share (the same flag means the same thing everywhere)."""

from __future__ import annotations

import enum
import re
from typing import Annotated

import typer

from .. import _crypto, _signing
from ..errors import (
    MalformedError,
    QeltrixIOError,
)
from ._app import KMS_ENDPOINT_ENV, PASSPHRASE_ENV, CliError, ExitCode

# --- sizes ----------------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*(\d[\d_,]*(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count: ``4096``, ``64KiB``, ``1MiB``, ``1.5GiB``, ``10MB`` (KB, MB: powers of 1000;
    K, M, KiB, MiB: powers of 1024)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 4096, 64KiB, 1MiB, 1.5GiB, 10MB)")
    digits = m.group(1).replace("_", "").replace(",", "")
    if "." not in digits:  # the common case, without importing fractions (and decimal)
        return int(digits) * _UNITS[unit]
    from fractions import Fraction

    value = Fraction(digits) * _UNITS[unit]
    if value.denominator != 1:
        raise typer.BadParameter(f"{text!r} is not a whole number of bytes")
    return int(value)


def human_size(n: int) -> str:
    """``262144`` -> ``256 KiB``; exact when the size is a whole number of units."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}" if n % size == 0 else f"{n / size:.1f} {unit}"
    return f"{n} B"


# --- common options -------------------------------------------------------------------------

PANEL_KEY = "Key (never given on the command line itself)"
PANEL_OUT = "Output"
PANEL_ADV = "Advanced"

KeyFileOpt = Annotated[
    str | None,
    typer.Option(
        "--key-file",
        "-k",
        metavar="FILE",
        help="File holding a 32-byte key (make one with 'qeltrix keygen').",
        rich_help_panel=PANEL_KEY,
    ),
]
PassphraseFileOpt = Annotated[
    str | None,
    typer.Option(
        "--passphrase-file",
        metavar="FILE",
        help=f"File whose first line is the passphrase. Else ${PASSPHRASE_ENV}, else a prompt.",
        rich_help_panel=PANEL_KEY,
    ),
]
PassphraseTrap = Annotated[
    str | None,
    typer.Option("--passphrase", "-p", hidden=True, help="Refused: a secret on the command line leaks."),
]
IdentityOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--identity",
        "-i",
        metavar="ID_FILE",
        help="Private key that opens public-key recipients: an X25519 identity ('qeltrix keygen --x25519') "
        "or a PEM RSA private key. Repeatable.",
        rich_help_panel=PANEL_KEY,
    ),
]
KmsEndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--kms-endpoint",
        metavar="URL",
        envvar=KMS_ENDPOINT_ENV,
        help=f"AWS KMS API endpoint for kms: recipients (default: AWS's; env ${KMS_ENDPOINT_ENV}). "
        "Credentials and region come from the usual AWS settings.",
        rich_help_panel=PANEL_KEY,
    ),
]
KmsTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--kms-timeout",
        metavar="SECONDS",
        min=0.1,
        max=300,
        help="Connect and read timeout of each KMS request.",
        rich_help_panel=PANEL_ADV,
    ),
]
RecipientOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--recipient",
        "-r",
        metavar="PUBKEY",
        help="Seal to a public key: qltx-x25519:... (from 'qeltrix keygen --x25519'), kms:KEY_ID, "
        "or the path of a PEM RSA public key file (3072 bits or more). Repeatable.",
        rich_help_panel=PANEL_KEY,
    ),
]
RecipientsFileOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--recipients-file",
        "-R",
        metavar="FILE",
        help="File of recipients: one qltx-x25519:/kms: entry per line and/or PEM public keys; # comments.",
        rich_help_panel=PANEL_KEY,
    ),
]
KmsKeyIdOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--kms-key-id",
        metavar="ARN",
        help="A KMS key this reader may call to unwrap the master key (strict mode; repeatable). "
        "Without it (or --kms-discovery) KMS recipients are not tried.",
        rich_help_panel=PANEL_KEY,
    ),
]
KmsDiscoveryOpt = Annotated[
    bool,
    typer.Option(
        "--kms-discovery",
        help="Call whichever KMS key the container names (discovery mode). Off by default: the header is "
        "not authenticated until it opens, so a forged stanza could make you call an attacker's key.",
        rich_help_panel=PANEL_ADV,
    ),
]
MaxKdfMemoryOpt = Annotated[
    int | None,
    typer.Option(
        "--max-kdf-memory",
        parser=parse_size,
        metavar="SIZE",
        help="Refuse a passphrase KDF (Argon2id) that asks for more memory than this (default 1GiB, the "
        "format's limit), before it runs.",
        rich_help_panel=PANEL_ADV,
    ),
]
AllowIncompleteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-incomplete",
        help="Read an INCOMPLETE container (a stream cut before its FINAL frame) up to where it was cut, "
        "with a warning, instead of failing with exit code 5.",
    ),
]
PANEL_SIGN = "Signatures (who wrote it)"
SignerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--signer",
        metavar="PUBKEY",
        help="Require a signature by this qltx-ed25519:... key (from 'qeltrix keygen --ed25519'). Repeatable: any "
        "one of them.",
        rich_help_panel=PANEL_SIGN,
    ),
]
SignersFileOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--signers-file",
        metavar="FILE",
        help="File of accepted signers: one qltx-ed25519:... key per line; # comments.",
        rich_help_panel=PANEL_SIGN,
    ),
]
SignWithOpt = Annotated[
    str | None,
    typer.Option(
        "--sign-with",
        metavar="KEY_FILE",
        help="Sign with this Ed25519 private key ('qeltrix keygen --ed25519'), so readers can check who wrote it.",
        rich_help_panel=PANEL_SIGN,
    ),
]


def signers_from_options(signer: list[str] | None, signers_file: list[str] | None) -> list[str] | None:
    """The pinned signer keys of --signer/--signers-file (checked), or None when neither was given."""
    if not signer and not signers_file:
        return None
    out: list[str] = []
    try:
        for text in signer or []:
            _signing.decode_signer(text)
            out.append(text.strip())
        for path in signers_file or []:
            out += _signing.read_signers_file(path)
    except MalformedError as e:
        raise CliError(str(e), code=ExitCode.USAGE) from None
    if not out:
        raise CliError("the signers file lists no signer", code=ExitCode.USAGE)
    return out


def read_signing_key(path: str | None) -> _crypto.Ed25519Signer | None:
    """The signer of --sign-with, checked before anything is read or written."""
    if path is None:
        return None
    try:
        return _signing.load_signer(path)
    except MalformedError as e:
        raise CliError(str(e), hint="make one with 'qeltrix keygen --ed25519 -o FILE'", code=ExitCode.USAGE) from None
    except QeltrixIOError as e:
        raise CliError(str(e), code=ExitCode.IO) from None


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no status messages.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.", rich_help_panel=PANEL_ADV)]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-j", min=1, max=64, metavar="N", help="Worker threads (default: one per core)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite DST if it exists.", rich_help_panel=PANEL_OUT)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]


class CipherName(enum.StrEnum):
    aes = "aes-256-gcm"
    chacha = "chacha20-poly1305"


class KdfName(enum.StrEnum):
    argon2id = "argon2id"
    pbkdf2 = "pbkdf2"


KdfOpt = Annotated[
    KdfName,
    typer.Option(
        "--kdf",
        help="Passphrase KDF. Argon2id (memory-hard) unless you need PBKDF2 for compatibility.",
        rich_help_panel=PANEL_ADV,
        case_sensitive=False,
    ),
]
KdfIterationsOpt = Annotated[
    int | None,
    typer.Option(
        "--kdf-iterations",
        metavar="N",
        min=1000,
        max=10_000_000,
        help=f"PBKDF2 iterations (default {_crypto.PBKDF2_DEFAULT_ITERATIONS:,}); only with --kdf pbkdf2.",
        rich_help_panel=PANEL_ADV,
    ),
]


def _refuse_passphrase_value(value: str | None) -> None:
    if value is not None:
        raise CliError(
            "a passphrase is never accepted on the command line: it would show in 'ps' and shell history",
            hint=f"use --passphrase-file FILE, the {PASSPHRASE_ENV} environment variable, or the prompt",
            code=ExitCode.USAGE,
        )
