"""Exit codes, one-line errors, the typer app and the entry point: what every command shares."""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import typer
import typer.core
from typer._click import core as _ck
from typer._click import exceptions as _cx
from typer._coercion import RuntimeParam, TypeDescriptor
from typer._param_types import coerce_cli_choice
from typer.core import TyperGroup, TyperOption

from .. import _crypto
from ..errors import (
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
    TERMINATED = 143


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success (verify: every block authenticated, and the container is complete)",
    ExitCode.ERROR: "any other error",
    ExitCode.USAGE: "usage error: bad option or value, or no key given",
    ExitCode.WRONG_KEY: "wrong passphrase or key file",
    ExitCode.CORRUPT: "the container is corrupt or was tampered with",
    ExitCode.TRUNCATED: "the container is cut short (truncated), or INCOMPLETE (a cut stream)",
    ExitCode.IO: "I/O error: missing file, permission, disk full, output exists",
    ExitCode.NOT_A_CONTAINER: "not a Qeltrix V6 container, or a field over a limit",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); no partial output file is left",
    ExitCode.BROKEN_PIPE: "the reader of stdout went away (broken pipe)",
    ExitCode.TERMINATED: "terminated by SIGTERM (SIGHUP: 129); no partial output file is left",
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
    # A RecipientError can only exist once its module is loaded (commands that only read never load it).
    recipients = sys.modules.get("qeltrix_v6._recipients")
    if recipients is not None and isinstance(e, recipients.RecipientError):
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


def _metavar_for(opt: TyperOption) -> str | None:
    """The conventional metavar for an option that did not name one: none for a flag
    (``--quiet``, not ``--quiet <bool>``), ``SECONDS`` for durations, ``N`` for counts."""
    if opt.is_flag or opt.count:
        return ""
    kind = opt.type_descriptor.annotation
    if kind in (int, float):
        name = (opt.name or "").lower()
        if name.endswith("_ms"):
            return "MS"
        if any(w in name for w in ("timeout", "interval", "delay", "seconds")):
            return "SECONDS"
        return "N" if kind is int else "NUMBER"
    return None


def _tidy_metavars(command: _ck.Command, help_names: list[str]) -> None:
    """Give every option of ``command`` and its subcommands (``--help`` too) a readable
    metavar where typer would print ``<bool>`` or ``<float range>``, before help is rendered."""
    ctx = _ck.Context(command, info_name=command.name, help_option_names=help_names)
    for param in [*command.params, command.get_help_option(ctx)]:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = _metavar_for(param)
    for sub in getattr(command, "commands", {}).values():
        _tidy_metavars(sub, help_names)


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
        _tidy_metavars(self, HELP_OPTION_NAMES)
        try:
            with self.make_context(prog_name, args, **extra) as ctx:
                _resume_gc()
                self.invoke(ctx)
            code = 0
        except typer.Exit as e:
            code = e.exit_code
        except (Exception, KeyboardInterrupt, _Terminated) as e:
            code = _report(e, debug)
        if standalone_mode:
            sys.exit(code)
        return code


# --- parameter coercion without pydantic ---------------------------------------------------
#
# typer (>= 0.29) coerces every parameter value through a pydantic TypeAdapter built on first
# use; importing pydantic and building the adapters is most of a short command's run time
# (``qeltrix cat`` of 64 KiB: ~130 ms of ~400 ms). The values qeltrix's options take (str, int,
# float, bool, enum choices, sizes through a ``parser``) are coerced here the way those adapters
# do when the value is well formed; anything else (a malformed value, another type) goes to
# typer's own adapter, so error messages and edge cases stay typer's, word for word.


class _Fallback(Exception):
    """This value is for typer's own (pydantic) coercion."""


_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_typer_build_runtime_param: Callable[[TypeDescriptor], RuntimeParam] = typer.core.build_runtime_param  # type: ignore[attr-defined]


def _leaf_coercion(annotation: Any, info: Any) -> Callable[[Any, Any], Any] | None:
    """A coercion for one value of ``annotation``, or None if typer's adapter must do it."""
    if info.parser is not None:
        parser = info.parser
        return lambda value, ctx: parser(value)
    if (isinstance(annotation, type) and issubclass(annotation, Enum)) or get_origin(annotation) is Literal:
        choices: tuple[Any, ...] = tuple(annotation) if isinstance(annotation, type) else get_args(annotation)  # type: ignore[arg-type]
        case = info.case_sensitive
        return lambda value, ctx: coerce_cli_choice(value, choices=choices, case_sensitive=case, ctx=ctx)
    if annotation is str:
        return _coerce_str
    if annotation is bool:
        return _coerce_bool
    if annotation in (int, float) and not info.clamp:
        lo, hi = info.min, info.max
        convert = _coerce_int if annotation is int else _coerce_float

        def number(value: Any, ctx: Any) -> Any:
            n = convert(value)
            if (lo is not None and n < lo) or (hi is not None and n > hi):
                raise _Fallback
            return n

        return number
    return None


def _coerce_str(value: Any, ctx: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Fallback


def _coerce_bool(value: Any, ctx: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Fallback


def _coerce_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        return int(value)
    raise _Fallback


def _coerce_float(value: Any) -> float:
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str) and _FLOAT_RE.fullmatch(value):
        return float(value)
    raise _Fallback


@dataclass(frozen=True)
class _PlainRuntimeParam(RuntimeParam):
    """Coerces well-formed values itself; hands anything else to typer's runtime parameter."""

    descriptor: TypeDescriptor
    leaf: Callable[[Any, Any], Any]
    is_list: bool

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            if self.is_list:
                return [self.leaf(v, ctx) for v in (value if isinstance(value, list | tuple) else [value])]
            return self.leaf(value, ctx)
        except Exception:
            # typer's adapter coerces it, or raises the error typer would have raised.
            return _typer_build_runtime_param(self.descriptor)._coerce_value(value, param, ctx)


def _build_runtime_param(descriptor: TypeDescriptor) -> RuntimeParam:
    annotation: Any = descriptor.annotation
    is_list = get_origin(annotation) is list
    if is_list:
        args = get_args(annotation)
        annotation = args[0] if len(args) == 1 else None
    leaf = None if descriptor.file_annotation is not None else _leaf_coercion(annotation, descriptor.parameter_info)
    if leaf is None:
        return _typer_build_runtime_param(descriptor)
    return _PlainRuntimeParam(
        parameter_info=descriptor.parameter_info,
        annotation=descriptor.annotation,
        descriptor=descriptor,
        leaf=leaf,
        is_list=is_list,
    )


typer.core.build_runtime_param = _build_runtime_param  # type: ignore[attr-defined]


HELP_OPTION_NAMES = ["-h", "--help"]

app = typer.Typer(
    cls=QeltrixGroup,
    help="Qeltrix V6: encrypted, seekable, streaming containers.\n\n"
    "Encrypt a file into a container, read any byte range back by decrypting only the blocks "
    "that cover it, and check it for tampering.",
    epilog=_exit_code_epilog(),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
)


_gc_paused = False


def pause_gc() -> None:
    """Pause the cyclic GC while the process starts (imports, building the command, parsing
    its options): that allocates tens of thousands of objects that live until exit, and the
    collections they trigger free nothing (issue 16). :func:`_resume_gc` ends the pause just
    before the command runs. Only the ``qeltrix`` process's own entry point calls this."""
    global _gc_paused
    _gc_paused = gc.isenabled()
    gc.disable()


def _resume_gc() -> None:
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        # What exists now lives until exit: frozen, no later collection walks it again.
        gc.freeze()
        gc.enable()


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
    try:
        app(prog_name="qeltrix")
    finally:
        _resume_gc()
