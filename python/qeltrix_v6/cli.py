"""The ``qeltrix`` command line (typer): pack, unpack, cat, info, verify, keygen, passwd, demo.

Conventions, the same on every command:

- Secrets never come from option values (they would show in ``ps`` and shell history):
  ``--key-file FILE`` (32 raw bytes), ``--passphrase-file FILE``, the environment variable
  ``QELTRIX_PASSPHRASE``, or a hidden prompt on the terminal.
- ``-`` means stdin or stdout. Nothing but data goes to stdout when stdout carries data;
  progress bars, prompts and messages go to stderr or the terminal.
- An expected failure prints one line ``qeltrix: error: ...`` (and maybe one ``hint: ...``
  line) on stderr and exits with a code from :class:`ExitCode`; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import enum
import getpass
import json
import os
import re
import signal
import stat
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as _cx
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as _cx  # type: ignore[no-redef,unused-ignore]
    from click.core import ParameterSource  # type: ignore[no-redef,assignment,unused-ignore]

from . import _core, _crypto, _pubkeys, _signing
from ._container import _open_input, incomplete_message, open_reader
from ._container import pack as _pack
from ._container import unpack as _unpack
from ._demo import run_demo
from ._recipients import (
    PASSPHRASE_KINDS,
    RecipientChange,
    RecipientError,
    describe_stanza,
    recipient_summary,
    rewrite_recipients,
    rotate,
)
from .errors import (
    AuthenticationError,
    IntegrityError,
    MalformedError,
    QeltrixError,
    QeltrixIOError,
    SignatureError,
    TruncatedError,
    WrongKeyError,
)

PASSPHRASE_ENV = "QELTRIX_PASSPHRASE"
NEW_PASSPHRASE_ENV = "QELTRIX_NEW_PASSPHRASE"
DEBUG_ENV = "QELTRIX_DEBUG"
KEY_FILE_LEN = _crypto.KEY_LEN
KMS_ENDPOINT_ENV = "QELTRIX_KMS_ENDPOINT"
IDENTITY_KINDS = frozenset({_crypto.KIND_X25519, _crypto.KIND_RSA_OAEP})


# --- exit codes: the one place they are defined ----------------------------------------------


class ExitCode(enum.IntEnum):
    """Process exit codes of ``qeltrix`` (documented in ``qeltrix --help`` and the README)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    WRONG_KEY = 3
    CORRUPT = 4
    TRUNCATED = 5
    IO = 6
    NOT_A_CONTAINER = 7
    INTERRUPTED = 130
    BROKEN_PIPE = 141


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success (verify: every block authenticated)",
    ExitCode.ERROR: "any other error",
    ExitCode.USAGE: "usage error: bad option or value, or no key given",
    ExitCode.WRONG_KEY: "wrong passphrase or key file",
    ExitCode.CORRUPT: "the container is corrupt or was tampered with",
    ExitCode.TRUNCATED: "the container is cut short (truncated)",
    ExitCode.IO: "I/O error: missing file, permission, disk full, output exists",
    ExitCode.NOT_A_CONTAINER: "not a Qeltrix V6 container, or a field over a limit",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C, SIGTERM); no partial output file is left (servers exit 0)",
    ExitCode.BROKEN_PIPE: "the reader of stdout went away (broken pipe)",
}


def _exit_code_epilog() -> str:
    lines = ["[bold]Exit codes[/bold]", ""]
    lines += [f"  {int(code):>3}  {text}" for code, text in EXIT_CODE_HELP.items()]
    lines += [
        "",
        f"Keys: --key-file FILE, --passphrase-file FILE, ${PASSPHRASE_ENV}, or a prompt on the terminal;",
        "public-key recipients: pack --recipient PUBKEY, then unpack --identity ID_FILE.",
        "Run 'qeltrix COMMAND --help' for examples.",
    ]
    return "\n".join(lines)


class CliError(_cx.ClickException):
    """An expected failure: one message line, an optional hint, an exit code."""

    def __init__(self, message: str, *, hint: str | None = None, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = int(code)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so temporary outputs are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _classify(e: BaseException) -> tuple[int, str | None, str | None]:
    """(exit code, message, hint) for an exception; message None means print nothing."""
    if isinstance(e, CliError):
        return e.exit_code, e.format_message(), e.hint
    if isinstance(e, _cx.NoArgsIsHelpError):
        return ExitCode.USAGE, None, None
    if isinstance(e, _cx.UsageError):
        path = e.ctx.command_path if e.ctx is not None else "qeltrix"
        return ExitCode.USAGE, e.format_message(), f"run '{path} --help' for usage and examples"
    if isinstance(e, _cx.ClickException):
        return e.exit_code, e.format_message(), None
    if isinstance(e, typer.Abort):
        if isinstance(e.__cause__, EOFError):
            return ExitCode.ERROR, "no input at the prompt", None
        return ExitCode.INTERRUPTED, "interrupted", None
    if isinstance(e, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted", None
    if isinstance(e, EOFError):
        return ExitCode.ERROR, "no input at the prompt (end of file)", None
    if isinstance(e, _Terminated):
        return 128 + e.signum, f"terminated by signal {e.signum}", None
    if _is_broken_pipe(e):
        return ExitCode.BROKEN_PIPE, None, None
    if isinstance(e, WrongKeyError):
        return ExitCode.WRONG_KEY, str(e), "check the passphrase or key file; 'qeltrix info FILE' lists the recipients"
    if isinstance(e, SignatureError):
        return (
            ExitCode.CORRUPT,
            str(e),
            "not written by a required --signer, or changed since it was signed; 'qeltrix verify' shows the signer",
        )
    if isinstance(e, TruncatedError):
        return ExitCode.TRUNCATED, str(e), "the file is cut short: an interrupted copy, download or write?"
    if isinstance(e, IntegrityError):
        return (
            ExitCode.CORRUPT,
            str(e),
            "the container is damaged or was tampered with; 'qeltrix verify' names bad blocks",
        )
    if isinstance(e, RecipientError):
        return ExitCode.ERROR, str(e), "nothing was changed"
    if isinstance(e, MalformedError):
        return ExitCode.NOT_A_CONTAINER, str(e), None
    if isinstance(e, QeltrixIOError):
        return ExitCode.IO, str(e), None
    if isinstance(e, QeltrixError):
        return ExitCode.ERROR, str(e), None
    if isinstance(e, OSError):
        what = f"{e.filename}: " if e.filename else ""
        return ExitCode.IO, f"{what}{e.strerror or e}", None
    if isinstance(e, ValueError):
        return ExitCode.USAGE, str(e), None
    if isinstance(e, MemoryError):
        return ExitCode.ERROR, "out of memory", None
    return (
        ExitCode.ERROR,
        f"internal error: {type(e).__name__}: {e}",
        "run again with --debug for a traceback, and please report it",
    )


def _is_broken_pipe(e: BaseException) -> bool:
    if isinstance(e, BrokenPipeError):
        return True
    return isinstance(e, OSError) and ("Broken pipe" in str(e) or e.errno == 32)


def _report(e: BaseException, debug: bool) -> int:
    code, message, hint = _classify(e)
    if code == ExitCode.BROKEN_PIPE:
        # Nobody reads stdout any more: silence it so the interpreter's final flush stays quiet.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return int(code)
    if debug and not isinstance(e, _cx.UsageError):
        traceback.print_exception(e, file=sys.stderr)
    if message is not None:
        typer.echo(f"qeltrix: error: {_one_line(message)}", err=True)
        if hint:
            typer.echo(f"hint: {_one_line(hint)}", err=True)
    return int(code)


class QeltrixGroup(TyperGroup):
    """Runs a command and turns every failure into one line on stderr and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        prog_name = prog_name or "qeltrix"
        debug = "--debug" in args or bool(os.environ.get(DEBUG_ENV))
        self._main_shell_completion(extra, prog_name, complete_var)
        try:
            with self.make_context(prog_name, args, **extra) as ctx:
                self.invoke(ctx)
            code = 0
        except typer.Exit as e:
            code = e.exit_code
        except (Exception, KeyboardInterrupt, _Terminated) as e:
            code = _report(e, debug)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=QeltrixGroup,
    help="Qeltrix V6: encrypted, seekable, streaming containers.\n\n"
    "Encrypt a file into a container, read any byte range back by decrypting only the blocks "
    "that cover it, and check it for tampering.",
    epilog=_exit_code_epilog(),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    value = Fraction(m.group(1).replace("_", "").replace(",", "")) * _UNITS[unit]
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


# --- terminal, prompts, key sources ---------------------------------------------------------


def _can_prompt() -> bool:
    """Whether a hidden prompt can be shown: there is a controlling terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _ask(prompt: str) -> str:
    return getpass.getpass(prompt)


def _no_key_error(what: str) -> CliError:
    return CliError(
        f"no key given for {what}, and no terminal to ask for a passphrase",
        hint=f"use --key-file FILE, --passphrase-file FILE, or set {PASSPHRASE_ENV}",
        code=ExitCode.USAGE,
    )


def _prompt_passphrase(prompt: str, *, confirm: str | None = None, what: str) -> str:
    if not _can_prompt():
        raise _no_key_error(what)
    pw = _ask(prompt)
    if not pw:
        raise CliError("the passphrase is empty", code=ExitCode.USAGE)
    if confirm is not None and _ask(confirm) != pw:
        raise CliError("the two passphrases do not match", hint="nothing was written", code=ExitCode.USAGE)
    return pw


def _display(path: str) -> str:
    return "stdin" if path == "-" else path


def read_key_file(path: str) -> bytes:
    """The 32 raw bytes of a key file, or a :class:`CliError` that says what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_LEN + 1)
    except FileNotFoundError:
        raise CliError(
            f"key file {path}: no such file", hint="make one with 'qeltrix keygen -o FILE'", code=ExitCode.IO
        ) from None
    except IsADirectoryError:
        raise CliError(f"key file {path}: is a directory", code=ExitCode.IO) from None
    except OSError as e:
        raise CliError(f"key file {path}: {e.strerror}", code=ExitCode.IO) from None
    if len(data) != KEY_FILE_LEN:
        size = f"{len(data)} bytes" if len(data) <= KEY_FILE_LEN else f"more than {KEY_FILE_LEN} bytes"
        raise CliError(
            f"key file {path} holds {size}; a key file holds exactly {KEY_FILE_LEN} raw bytes",
            hint="make one with 'qeltrix keygen -o FILE'",
            code=ExitCode.USAGE,
        )
    return data


def read_passphrase_file(path: str) -> str:
    """The passphrase in a file: its first line, without the line ending."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except FileNotFoundError:
        raise CliError(f"passphrase file {path}: no such file", code=ExitCode.IO) from None
    except OSError as e:
        raise CliError(f"passphrase file {path}: {e.strerror}", code=ExitCode.IO) from None
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not line:
        raise CliError(f"passphrase file {path} is empty (or its first line is)", code=ExitCode.USAGE)
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"passphrase file {path} is not UTF-8 text", code=ExitCode.USAGE) from None


def _env_passphrase(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if value == "":
        raise CliError(f"${name} is set but empty", hint="unset it or give a passphrase", code=ExitCode.USAGE)
    return value


class Credentials:
    """A passphrase, a key, identities and/or KMS access, as the container API takes them."""

    def __init__(
        self,
        passphrase: str | None = None,
        key: bytes | None = None,
        identities: list[bytes] | None = None,
        kms: Any = None,
        max_kdf_memory: int | None = None,
    ) -> None:
        self.passphrase = passphrase
        self.key = key
        self.identities = identities or []
        self.kms = kms
        self.max_kdf_memory = max_kdf_memory

    def given(self) -> bool:
        return self.passphrase is not None or self.key is not None or bool(self.identities) or self.kms is not None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passphrase": self.passphrase, "key": self.key}
        if self.identities:
            out["identity"] = self.identities
        if self.kms is not None:
            out["kms"] = self.kms
        if self.max_kdf_memory is not None:
            out["max_kdf_memory"] = self.max_kdf_memory
        return out


def read_identity_file(path: str) -> bytes:
    """An identity file: a raw 32-byte X25519 private key or a PEM RSA private key (checked)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except FileNotFoundError:
        raise CliError(
            f"identity file {path}: no such file",
            hint="make one with 'qeltrix keygen --x25519 -o FILE'",
            code=ExitCode.IO,
        ) from None
    except IsADirectoryError:
        raise CliError(f"identity file {path}: is a directory", code=ExitCode.IO) from None
    except OSError as e:
        raise CliError(f"identity file {path}: {e.strerror}", code=ExitCode.IO) from None
    try:
        _crypto.Identity(data)
    except MalformedError as e:
        raise CliError(f"identity file {path}: {e}", code=ExitCode.USAGE) from None
    return data


def kms_config(
    endpoint: str | None, timeout: float = 10.0, key_ids: list[str] | None = None, discovery: bool = False
) -> Any:
    from ._kms import KmsConfig

    return KmsConfig(endpoint_url=endpoint or None, timeout=timeout, key_ids=tuple(key_ids or ()), discovery=discovery)


def parse_recipient_options(recipients: list[str] | None, recipients_files: list[str] | None) -> list[Any]:
    """``--recipient`` values (a public key text or a PEM file path) and ``--recipients-file`` entries."""
    out: list[Any] = []
    for value in recipients or []:
        text = value.strip()
        try:
            if text.startswith((_pubkeys.X25519_PREFIX, _pubkeys.KMS_PREFIX)):
                out.append(_pubkeys.parse_recipient(text))
                continue
            if not os.path.isfile(text):
                raise CliError(
                    f"--recipient {text[:60]!r}: not a qltx-x25519:... key, a kms:KEY_ID, or a PEM public key file",
                    code=ExitCode.USAGE,
                )
            with open(text, "rb") as f:
                out.append(_pubkeys.parse_recipient(f.read(1 << 16)))
        except MalformedError as e:
            raise CliError(f"--recipient {text[:60]}: {e}", code=ExitCode.USAGE) from None
        except OSError as e:
            raise CliError(f"{text}: {e.strerror}", code=ExitCode.IO) from None
    for path in recipients_files or []:
        try:
            out += _pubkeys.read_recipients_file(path)
        except MalformedError as e:
            raise CliError(str(e), code=ExitCode.USAGE) from None
        except FileNotFoundError:
            raise CliError(f"recipients file {path}: no such file", code=ExitCode.IO) from None
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"recipients file {path}: {getattr(e, 'strerror', None) or e}", code=ExitCode.IO) from None
    return _pubkeys.parse_recipients(out)


def _explicit_credentials(
    key_file: str | None, passphrase_file: str | None, identity_files: list[str] | None = None
) -> Credentials:
    creds = Credentials(
        passphrase=read_passphrase_file(passphrase_file) if passphrase_file else None,
        key=read_key_file(key_file) if key_file else None,
        identities=[read_identity_file(p) for p in identity_files or []],
    )
    if not creds.given():
        creds.passphrase = _env_passphrase(PASSPHRASE_ENV)
    return creds


def _stanza_kinds(src: str) -> set[int]:
    with _open_input(src) as f:
        reader = _core.Reader(f.fileno())
        return {int(kind) for kind, _ in reader.stanzas}


def credentials_for_reading(
    src: str,
    key_file: str | None,
    passphrase_file: str | None,
    *,
    prompt: bool = True,
    identity_files: list[str] | None = None,
    kms_endpoint: str | None = None,
    kms_timeout: float = 10.0,
    kms_key_ids: list[str] | None = None,
    kms_discovery: bool = False,
    max_kdf_memory: int | None = None,
) -> Credentials:
    """Options first, then ``$QELTRIX_PASSPHRASE``, then a prompt (when ``prompt`` and a terminal).

    A container with a KMS recipient is opened through the KMS when no other credential is
    given (or when a KMS option is); only the keys named by ``--kms-key-id`` are called unless
    ``--kms-discovery``. A container sealed only to public keys needs ``--identity`` and says
    so instead of asking for a passphrase.
    """
    creds = _explicit_credentials(key_file, passphrase_file, identity_files)
    creds.max_kdf_memory = max_kdf_memory
    kinds = _stanza_kinds(src) if src != "-" and os.path.isfile(src) else set()
    kms_asked = bool(kms_endpoint or kms_key_ids or kms_discovery)
    if (_crypto.KIND_KMS in kinds and (kms_asked or not creds.given())) or (src == "-" and kms_asked):
        creds.kms = kms_config(kms_endpoint, kms_timeout, kms_key_ids, kms_discovery)
    if creds.given() or not prompt:
        return creds
    # The public header was read first: fail fast on a non-container, and do not ask for a
    # passphrase that cannot open it.
    if src != "-" and not kinds & PASSPHRASE_KINDS:
        if _crypto.KIND_KEY in kinds:
            raise CliError(f"{src} opens only with a key file", hint="use --key-file FILE", code=ExitCode.USAGE)
        if kinds & IDENTITY_KINDS:
            raise CliError(
                f"{src} is sealed to public keys and opens only with a private key (identity)",
                hint="use --identity ID_FILE; 'qeltrix recipients list' shows the public keys it is sealed to",
                code=ExitCode.USAGE,
            )
    creds.passphrase = _prompt_passphrase(f"Passphrase for {_display(src)}: ", what=_display(src))
    return creds


def credentials_for_writing(
    key_file: str | None, passphrase_file: str | None, dst: str, *, recipients: bool = False
) -> Credentials:
    """Options first, then ``$QELTRIX_PASSPHRASE``, then a prompt asked twice.

    With public ``recipients`` only the explicit --key-file/--passphrase-file add to them: a
    public-key-only writer is never asked for a passphrase.
    """
    if recipients:
        return Credentials(
            passphrase=read_passphrase_file(passphrase_file) if passphrase_file else None,
            key=read_key_file(key_file) if key_file else None,
        )
    creds = _explicit_credentials(key_file, passphrase_file)
    if not creds.given():
        creds.passphrase = _prompt_passphrase(
            "New passphrase: ", confirm="Confirm passphrase: ", what=f"the new container {_display(dst)}"
        )
    return creds


def _kdf_settings(
    kdf: KdfName, kdf_iterations: int | None, *, has_passphrase: bool, ctx: typer.Context
) -> tuple[str, dict[str, int] | None]:
    source = ctx.get_parameter_source("kdf")
    if kdf_iterations is not None and kdf is not KdfName.pbkdf2:
        raise CliError("--kdf-iterations needs --kdf pbkdf2", code=ExitCode.USAGE)
    if not has_passphrase and source is ParameterSource.COMMANDLINE:
        raise CliError("--kdf applies to a passphrase, and none is given", code=ExitCode.USAGE)
    params = {"iterations": kdf_iterations} if kdf_iterations is not None else None
    return kdf.value, params


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
    if dst == "-":
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
    if src == "-":
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


# --- commands -------------------------------------------------------------------------------


def _show_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"qeltrix {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Show the version and exit.", is_eager=True, callback=_show_version),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Qeltrix V6: encrypted, seekable, streaming containers."""


@app.command(rich_help_panel="Containers")
def pack(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(metavar="SRC", help="File to encrypt, or - for stdin.")],
    dst: Annotated[str, typer.Argument(metavar="DST", help="Container to write, or - for stdout.")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
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
    """
    _refuse_passphrase_value(passphrase)
    if not _core.MIN_BLOCK_SIZE <= block_size <= _core.MAX_BLOCK_SIZE:
        raise CliError(
            f"--block-size must be between {_core.MIN_BLOCK_SIZE} bytes and {human_size(_core.MAX_BLOCK_SIZE)}, "
            f"not {block_size}",
            code=ExitCode.USAGE,
        )
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
def unpack(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to decrypt, or - for stdin.")],
    dst: Annotated[str, typer.Argument(metavar="DST", help="File to write, or - for stdout.")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    identity: IdentityOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    max_kdf_memory: MaxKdfMemoryOpt = None,
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
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    _check_input(src)
    _check_output(dst, force)
    if src == "-" and sys.stdin.isatty():
        raise CliError(
            "refusing to read a container from the terminal", hint="pipe or redirect it", code=ExitCode.USAGE
        )
    creds = credentials_for_reading(
        src,
        key_file,
        passphrase_file,
        identity_files=identity,
        kms_endpoint=kms_endpoint,
        kms_timeout=kms_timeout,
        kms_key_ids=kms_key_id,
        kms_discovery=kms_discovery,
        max_kdf_memory=max_kdf_memory,
    )
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
def cat(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to read from.")],
    offset: Annotated[
        int, typer.Option("--offset", parser=parse_size, metavar="SIZE", help="First plaintext byte.")
    ] = 0,
    length: Annotated[
        int | None,
        typer.Option("--length", parser=parse_size, metavar="SIZE", help="Bytes to write (default: to the end)."),
    ] = None,
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    identity: IdentityOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    max_kdf_memory: MaxKdfMemoryOpt = None,
    allow_incomplete: AllowIncompleteOpt = False,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Write the plaintext bytes [offset, offset+length) of SRC to stdout.

        Only the blocks that cover the range are read and decrypted, so reading 64 KiB from
        the middle of a 100 GiB container takes milliseconds. A range past the end is clipped,
        like reading a file: it may be shorter than --length, or empty; in an INCOMPLETE container
    (a cut stream) such a range fails with exit code 5 unless --allow-incomplete.

        [bold]Examples[/bold]

          qeltrix cat --key-file my.key movie.qltx --offset 200MiB --length 1MiB > part.bin
          qeltrix cat --key-file my.key logs.qltx --offset 1GiB | head -n 20
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    _check_input(src)
    creds = credentials_for_reading(
        src,
        key_file,
        passphrase_file,
        identity_files=identity,
        kms_endpoint=kms_endpoint,
        kms_timeout=kms_timeout,
        kms_key_ids=kms_key_id,
        kms_discovery=kms_discovery,
        max_kdf_memory=max_kdf_memory,
    )
    opened = open_reader(
        _stdin() if src == "-" else src, **creds.kwargs(), allow_incomplete=allow_incomplete, signers=signers
    )
    out = _stdout()
    try:
        r = opened.reader
        total = int(r.pt_total_len)
        end = total if length is None else min(total, offset + length)
        # Reading to the end of an incomplete container fails here, before any output.
        opened.check_end(offset, max(1, total - offset + 1) if length is None else length)
        chunk = max(int(r.block_size), 1 << 20)
        # Chunks aligned to block boundaries decrypt every block once.
        pos = offset
        while pos < end:
            stop = min(end, (pos // chunk + 1) * chunk)
            out.write(r.read_at(pos, stop - pos))
            pos = stop
        out.flush()
    finally:
        opened.close()


def _public_info(src: str) -> dict[str, Any]:
    with _open_input(src) as f:
        r = _core.Reader(f.fileno())
        checksum_ok = _crypto.sha256(r.header_checksummed) == r.header_sha256
        cipher_names = {v: k for k, v in _crypto.CIPHERS.items()}
        return {
            "file": src,
            "format_version": int(r.format_version),
            "cipher": cipher_names.get(int(r.cipher_id), f"unknown ({r.cipher_id})"),
            "cipher_id": int(r.cipher_id),
            "block_size": int(r.block_size),
            "permuted": bool(r.perm_window),
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
        ("format", f"Qeltrix V6, version {info['format_version']}"),
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
def verify(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to check.")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    identity: IdentityOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    max_kdf_memory: MaxKdfMemoryOpt = None,
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
    creds = credentials_for_reading(
        src,
        key_file,
        passphrase_file,
        identity_files=identity,
        kms_endpoint=kms_endpoint,
        kms_timeout=kms_timeout,
        kms_key_ids=kms_key_id,
        kms_discovery=kms_discovery,
        max_kdf_memory=max_kdf_memory,
    )
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
        raise CliError(
            what,
            hint=f"damaged blocks: {bad_count} of {n}; the others can still be read with 'qeltrix cat'",
            code=code,
        )
    finally:
        opened.close()


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
        from .gateway import encode_public_key

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
    for any size. Open SRC with its current key (--key-file, --passphrase-file,
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
    context_settings={"help_option_names": ["-h", "--help"]},
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
def recipients_add(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to change (in place).")],
    recipient: RecipientOpt = None,
    recipients_file: RecipientsFileOpt = None,
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    identity: IdentityOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    max_kdf_memory: MaxKdfMemoryOpt = None,
    sign_with: SignWithOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Seal the MK of SRC to more public keys (X25519, RSA, KMS), rewriting only the header.

    Opening SRC needs one of its current credentials (--key-file, --passphrase-file,
    --identity, KMS access). Instant for any container size: no block is read or written.

    [bold]Examples[/bold]

      qeltrix recipients add --identity me.id --recipient qltx-x25519:AbC... db.qltx
      qeltrix recipients add --key-file my.key --recipient ops.pub.pem --recipient kms:alias/backup db.qltx
    """
    _refuse_passphrase_value(passphrase)
    _in_place_target(src, "recipients add")
    public = parse_recipient_options(recipient, recipients_file)
    if not public:
        raise CliError("nothing to add", hint="give --recipient PUBKEY or --recipients-file FILE", code=ExitCode.USAGE)
    creds = credentials_for_reading(
        src,
        key_file,
        passphrase_file,
        identity_files=identity,
        kms_endpoint=kms_endpoint,
        kms_timeout=kms_timeout,
        kms_key_ids=kms_key_id,
        kms_discovery=kms_discovery,
        max_kdf_memory=max_kdf_memory,
    )
    kms = kms_config(kms_endpoint, kms_timeout) if any(r.kind == _crypto.KIND_KMS for r in public) else None
    result = rewrite_recipients(
        src,
        RecipientChange(add_recipients=public, kms=kms),
        **creds.kwargs(),
        sign_with=read_signing_key(sign_with),
    )
    _status(quiet, f"updated {src}: {len(result.after)} recipients")


@recipients_app.command("remove")
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
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    identity: IdentityOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    max_kdf_memory: MaxKdfMemoryOpt = None,
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
    creds = credentials_for_reading(
        src,
        key_file,
        passphrase_file,
        identity_files=identity,
        kms_endpoint=kms_endpoint,
        kms_timeout=kms_timeout,
        kms_key_ids=kms_key_id,
        kms_discovery=kms_discovery,
        max_kdf_memory=max_kdf_memory,
    )
    result = rewrite_recipients(
        src, RecipientChange(remove_recipients=targets), **creds.kwargs(), sign_with=read_signing_key(sign_with)
    )
    _status(quiet, f"updated {src}: {len(result.after)} recipients")


@app.command("rotate", rich_help_panel="Keys")
def rotate_cmd(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Container to re-encrypt (replaced atomically).")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    identity: IdentityOpt = None,
    recipient: RecipientOpt = None,
    recipients_file: RecipientsFileOpt = None,
    drop_missing: Annotated[
        bool,
        typer.Option(
            "--drop-missing",
            help="Drop the passphrase and key-file recipients whose secret was not given (else refuse).",
        ),
    ] = False,
    kms_endpoint: KmsEndpointOpt = None,
    kms_timeout: KmsTimeoutOpt = 10.0,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    max_kdf_memory: MaxKdfMemoryOpt = None,
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
    creds = credentials_for_reading(
        src,
        key_file,
        passphrase_file,
        identity_files=identity,
        kms_endpoint=kms_endpoint,
        kms_timeout=kms_timeout,
        kms_key_ids=kms_key_id,
        kms_discovery=kms_discovery,
        max_kdf_memory=max_kdf_memory,
    )
    if creds.kms is None and (kinds := _stanza_kinds(src)) and _crypto.KIND_KMS in kinds:
        creds.kms = kms_config(kms_endpoint, kms_timeout)  # needed to re-wrap for the KMS recipient
    if creds.kms is None and any(r.kind == _crypto.KIND_KMS for r in public):
        creds.kms = kms_config(kms_endpoint, kms_timeout)
    total = os.path.getsize(src)
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


@app.command(rich_help_panel="Other")
def demo() -> None:
    """Pack a generated 64 MiB sample, then read 64 KiB from its middle.

    [bold]Example[/bold]

      qeltrix demo
    """
    if not run_demo(say=typer.echo):
        raise typer.Exit(1)


def _on_signal(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    # The library's warnings (an incomplete container read on request) as one line, no source.
    print(f"qeltrix: warning: {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Console-script entry point (``qeltrix`` and ``python -m qeltrix_v6``)."""
    warnings.showwarning = _show_warning
    # SIGTERM and SIGHUP unwind like Ctrl-C, so atomic outputs remove their temporary files.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, _on_signal)
    app(prog_name="qeltrix")


__all__ = ["EXIT_CODE_HELP", "ExitCode", "app", "human_size", "main", "parse_size"]

# Server commands live in their own module; importing it registers them on `app`.
from . import _cli_servers  # noqa: E402, F401 - registers serve, gateway and recover
