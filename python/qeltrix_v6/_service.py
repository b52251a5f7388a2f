"""The life cycle shared by :class:`SeekServer` and :class:`GatewayServer`: a Rust core that
serves on its own threads, started, stopped and waited for from Python."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Self


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``; a clear TypeError or
    ValueError otherwise, never the extension's OverflowError for a negative or huge count."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def split_hostport(value: str | tuple[str, int]) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` too; an empty host is 127.0.0.1) as ``(host, port)``."""
    if isinstance(value, tuple):
        return value[0], check_int("port", value[1], 0, 65535)
    host, sep, digits = value.rpartition(":")
    if not sep or not digits.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", check_int("port", int(digits), 0, 65535)


class BackgroundService:
    """Start/stop/serve_forever/context manager around a ``_core`` server object.

    Subclasses build the core in :meth:`_make_core` (it binds the socket) and may log in
    :meth:`_started`.
    """

    def __init__(self) -> None:
        self._core: Any = None
        self._stopped = threading.Event()

    def _make_core(self) -> Any:
        raise NotImplementedError

    def _started(self) -> None:
        """Called once the core is bound."""

    def start(self) -> Self:
        """Bind and start serving in the background; returns self."""
        if self._core is None:
            self._core = self._make_core()
            self._stopped.clear()
            self._started()
        return self

    def stop(self) -> None:
        """Stop accepting connections."""
        if self._core is not None:
            self._core.stop()
            self._core = None
        self._stopped.set()

    def serve_forever(self) -> None:
        """Start if needed and block until :meth:`stop` (from another thread) or Ctrl-C."""
        self.start()
        try:
            while not self._stopped.wait(0.2):
                pass
        finally:
            self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._core is None:
            raise RuntimeError("not running: call start() first")
        host, port = self._core.address
        return str(host), int(port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
