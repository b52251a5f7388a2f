"""Where keys come from: key files, passphrase files, the environment, prompts, identities, KMS."""

from __future__ import annotations

import dataclasses
import functools
import getpass
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer._click.core import ParameterSource

from .. import _crypto, _pubkeys, _store
from .._container import public_reader
from ..errors import (
    MalformedError,
)
from ._app import IDENTITY_KINDS, KEY_FILE_LEN, PASSPHRASE_ENV, CliError, ExitCode
from ._options import (
    IdentityOpt,
    KdfName,
    KeyFileOpt,
    KmsDiscoveryOpt,
    KmsEndpointOpt,
    KmsKeyIdOpt,
    KmsTimeoutOpt,
    MaxKdfMemoryOpt,
    PassphraseFileOpt,
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
    from .._kms import KmsConfig

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
    with public_reader(src) as reader:
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
    kms_asked = bool(kms_endpoint or kms_key_ids or kms_discovery)
    # The header's stanza kinds decide only a KMS opening or a prompt: with a credential given
    # and no KMS option, not read here (on object storage that is a GET saved).
    peek = (kms_asked or not creds.given()) and src != "-" and (os.path.isfile(src) or _store.is_url(src))
    kinds = _stanza_kinds(src) if peek else set()
    if (_crypto.KIND_KMS in kinds and (kms_asked or not creds.given())) or (src == "-" and kms_asked):
        creds.kms = kms_config(kms_endpoint, kms_timeout, kms_key_ids, kms_discovery)
    if creds.given() or not prompt:
        return creds
    # The public header was read first: fail fast on a non-container, and do not ask for a
    # passphrase that cannot open it.
    if src != "-" and not kinds & _crypto.PASSPHRASE_KINDS:
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


# --- the credential options of the reading commands ----------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadingOptions:
    """The credential options every reading command takes (``--key-file``,
    ``--passphrase-file``, ``--identity``, the KMS options, ``--max-kdf-memory``), as one value:
    a command declares ``reading: ReadingOptions = READING`` under :func:`reading_options`."""

    key_file: str | None = None
    passphrase_file: str | None = None
    identity: list[str] | None = None
    kms_endpoint: str | None = None
    kms_timeout: float = 10.0
    kms_key_id: list[str] | None = None
    kms_discovery: bool = False
    max_kdf_memory: int | None = None

    def credentials(self, src: str) -> Credentials:
        """:func:`credentials_for_reading` for ``src`` with these options."""
        return credentials_for_reading(
            src,
            self.key_file,
            self.passphrase_file,
            identity_files=self.identity,
            kms_endpoint=self.kms_endpoint,
            kms_timeout=self.kms_timeout,
            kms_key_ids=self.kms_key_id,
            kms_discovery=self.kms_discovery,
            max_kdf_memory=self.max_kdf_memory,
        )


READING = ReadingOptions()

# The options, in help order, with the annotation each is declared with (its flag and help).
_READING_OPTIONS: list[tuple[str, Any]] = [
    ("key_file", KeyFileOpt),
    ("passphrase_file", PassphraseFileOpt),
    ("identity", IdentityOpt),
    ("kms_endpoint", KmsEndpointOpt),
    ("kms_timeout", KmsTimeoutOpt),
    ("kms_key_id", KmsKeyIdOpt),
    ("kms_discovery", KmsDiscoveryOpt),
    ("max_kdf_memory", MaxKdfMemoryOpt),
]

_F = TypeVar("_F", bound=Callable[..., Any])


def reading_options(command: _F) -> _F:
    """Give ``command`` the reading credential options in place of its ``reading`` parameter:
    typer sees (and ``--help`` lists) each option where ``reading`` stands; the command
    receives them as one :class:`ReadingOptions`."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if p.name != "reading":
            params.append(p)
            continue
        for name, annotation in _READING_OPTIONS:
            default = getattr(READING, name)
            params.append(inspect.Parameter(name, p.kind, default=default, annotation=annotation))

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        reading = ReadingOptions(**{name: kwargs.pop(name) for name, _ in _READING_OPTIONS})
        return command(reading=reading, **kwargs)

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return run  # type: ignore[return-value]
