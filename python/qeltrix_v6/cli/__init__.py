"""The ``qeltrix`` command line (typer).

One module per concern: ``_app`` (exit codes, errors, the app and ``main``), ``_options``
(shared options and sizes), ``_credentials`` (where keys come from), ``_output`` (status,
progress, path checks), and one module per command group: ``_containers`` (pack, unpack,
cat), ``_inspect`` (info, verify), ``_keys`` (keygen, passwd, recipients, rotate) and
``_servers`` (serve, gateway, recover); ``demo`` is here.

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

from typing import Annotated

import typer

from .._demo import run_demo
from ._app import EXIT_CODE_HELP, ExitCode, app, main
from ._options import DebugOpt, human_size, parse_size

# --- root options -----------------------------------------------------------------------------


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

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


# Importing the command modules registers their commands on `app`, in help order.
from . import _archive, _containers, _inspect, _keys, _mount, _servers  # noqa: E402, F401


@app.command(rich_help_panel="Other")
def demo() -> None:
    """Pack a generated 64 MiB sample, then read 64 KiB from its middle.

    [bold]Example[/bold]

      qeltrix demo
    """
    if not run_demo(say=typer.echo):
        raise typer.Exit(1)


__all__ = ["EXIT_CODE_HELP", "ExitCode", "app", "human_size", "main", "parse_size"]
