"""The ``qeltrix`` command line (typer).

One module per concern: ``_app`` (exit codes, errors, the app and ``main``), ``_options``
(shared options and sizes), ``_credentials`` (where keys come from), ``_output`` (status,
progress, path checks), and one module per command group: ``_archive`` (ls, get),
``_containers`` (pack, unpack, cat), ``_inspect`` (info, verify), ``_keys`` (keygen, passwd,
recipients, rotate), ``_mount`` (mount) and ``_servers`` (serve, gateway, recover); ``demo``
is here. ``main`` imports only the module of the command it runs.

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

import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

# Importing typer and the CLI creates tens of thousands of objects that live until exit; the
# cyclic GC would walk them again and again, freeing nothing (a few ms of every command's start,
# issue 16). So no collection during these imports, and what exists afterwards is frozen
# (gc.freeze: never walked again). The ``qeltrix`` process owns its interpreter; this module is
# its entry point, not a library.
_gc_was_enabled = gc.isenabled()
gc.disable()
try:
    import typer

    from . import _app
    from ._app import EXIT_CODE_HELP, ExitCode
    from ._options import DebugOpt, human_size, parse_size
finally:
    if _gc_was_enabled:
        gc.freeze()
        gc.enable()
    del _gc_was_enabled

if TYPE_CHECKING:
    from ._app import app

# --- root options -----------------------------------------------------------------------------


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"qeltrix {__version__}")
        raise typer.Exit(0)


@_app.app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Show the version and exit.", is_eager=True, callback=_show_version),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Qeltrix V6: encrypted, seekable, streaming containers."""


@_app.app.command(rich_help_panel="Other")
def demo() -> None:
    """Pack a generated 64 MiB sample, then read 64 KiB from its middle.

    [bold]Example[/bold]

      qeltrix demo
    """
    from .._demo import run_demo

    if not run_demo(say=typer.echo):
        raise typer.Exit(1)


# --- commands, loaded on demand -----------------------------------------------------------------
#
# Importing a command module registers its commands on the app. A process runs one command, so
# ``main`` imports only the module that defines it and builds only that command (the servers'
# module alone pulls in logging, sockets and email parsing; typer builds every option of every
# command it is given). ``--help``, completion, an unknown name or a name missing from this map
# load everything, in help order.

_COMMAND_MODULES = ("_archive", "_containers", "_inspect", "_keys", "_mount", "_servers")
_MODULE_OF = {
    "ls": "_archive",
    "get": "_archive",
    "pack": "_containers",
    "unpack": "_containers",
    "cat": "_containers",
    "info": "_inspect",
    "verify": "_inspect",
    "keygen": "_keys",
    "passwd": "_keys",
    "recipients": "_keys",
    "rotate": "_keys",
    "mount": "_mount",
    "serve": "_servers",
    "sign-url": "_servers",
    "gateway": "_servers",
    "recover": "_servers",
    "demo": "",
}
_ROOT_FLAGS = frozenset({"--debug"})


def _command_name(info: Any) -> str:
    return str(info.name or info.callback.__name__.replace("_", "-"))


def _load_commands(modules: Sequence[str] = _COMMAND_MODULES) -> None:
    """Import command modules (registering their commands), keeping the help order."""
    for name in modules:
        if name:
            importlib.import_module(f"{__name__}.{name}")
    order = {f"{__name__}.{name}": i for i, name in enumerate(_COMMAND_MODULES)}
    _app.app.registered_commands.sort(key=lambda c: order.get(c.callback.__module__, len(order)))


def _chosen_command(args: Sequence[str]) -> str | None:
    """The command ``args`` run, when only it needs building; None when all are needed."""
    if any(k.endswith("_COMPLETE") for k in os.environ):
        return None
    i = 0
    while i < len(args) and args[i] in _ROOT_FLAGS:
        i += 1
    if i < len(args) and args[i] in _MODULE_OF:
        return args[i]
    return None


def main() -> None:
    """Console-script entry point (``qeltrix`` and ``python -m qeltrix_v6``)."""
    _app.pause_gc()  # until the command runs (see pause_gc)
    chosen = _chosen_command(sys.argv[1:])
    if chosen is None:
        _load_commands()
        _app.main()
        return
    _load_commands([_MODULE_OF[chosen]])
    commands, groups = _app.app.registered_commands, _app.app.registered_groups
    only_commands = [c for c in commands if _command_name(c) == chosen]
    only_groups = [g for g in groups if g.name == chosen]
    _app.app.registered_commands, _app.app.registered_groups = list(only_commands), list(only_groups)
    try:
        _app.main()
    finally:
        # A command module imported while the command ran (pack imports _archive) registered
        # its commands on the narrowed lists: keep them.
        commands += [c for c in _app.app.registered_commands if c not in only_commands]
        groups += [g for g in _app.app.registered_groups if g not in only_groups]
        _app.app.registered_commands, _app.app.registered_groups = commands, groups
        _load_commands(())


def __getattr__(name: str) -> Any:
    # ``app`` with every command registered (tests and embedders use it directly).
    if name == "app":
        _load_commands()
        globals()["app"] = _app.app
        return _app.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXIT_CODE_HELP", "ExitCode", "app", "human_size", "main", "parse_size"]
