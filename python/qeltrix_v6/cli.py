"""The ``qeltrix`` command line (typer)."""

from __future__ import annotations

import typer

from ._demo import run_demo

app = typer.Typer(help="Qeltrix V6: encrypted, seekable, streaming containers.", no_args_is_help=True)


@app.command()
def demo() -> None:
    """Pack a generated 64 MiB sample, then read 64 KiB from its middle.

    Example: qeltrix demo
    """
    if not run_demo(say=typer.echo):
        raise typer.Exit(1)


@app.callback()
def _root() -> None:
    """Qeltrix V6: encrypted, seekable, streaming containers."""


def main() -> None:
    """Console-script entry point."""
    app()
