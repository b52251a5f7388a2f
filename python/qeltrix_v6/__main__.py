"""``python -m qeltrix_v6``: the same as the ``qeltrix`` command."""

from .cli import main

main()
