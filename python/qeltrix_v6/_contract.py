"""The Python side of the Rust/Python contract: every object the Rust core calls back into.

``rust/qeltrix-py/src/calls.rs`` lists every method and attribute Rust uses by name, with the
number of positional arguments it passes, and exports that list as ``_core.PYTHON_CALLS``
(``(object kind, name, argument count or None for an attribute)``). This module gives each
object kind a :class:`typing.Protocol`, names the classes that implement it
(:data:`IMPLEMENTATIONS`), and has mypy check those classes against the protocols
(:func:`_conformance`). ``tests/test_contract.py`` checks ``_core.PYTHON_CALLS`` against the
same classes with :func:`inspect.signature`, so a rename or a changed signature on either side
fails a test instead of a worker thread at run time.

Protocol parameters are positional-only: Rust passes every argument by position.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from typing import Protocol

from . import _container, _core, _crypto, gateway, server


class ContainerKeys(Protocol):
    """``_crypto.ContainerKeys``: the per-container crypto (FORMAT.md sections 4-6, 15)."""

    def seal_stream_frame(
        self, block_index: int, meta_flags: int, inbuf: memoryview, pt_len: int, outbuf: memoryview, /
    ) -> None: ...
    def open_stream_frame(self, inbuf: memoryview, avail: int, outbuf: memoryview, /) -> tuple[bytes, bool]: ...
    def open_meta(self, inbuf: memoryview, /) -> bytes: ...
    def open_block(
        self,
        block_index: int,
        pt_len: int,
        meta_flags: int,
        cdk_salt: bytes,
        data_nonce: bytes,
        pt_sha256: bytes,
        inbuf: memoryview,
        outbuf: memoryview,
        /,
    ) -> None: ...
    def seal_index(self, index_pt: bytes, footer_offset: int, /) -> bytes: ...
    def open_index(self, footer: bytes, footer_offset: int, /) -> bytes: ...
    def frame_digest(self, inbuf: memoryview, /) -> bytes: ...
    def sha256(self, data: bytes, /) -> bytes: ...


class Signer(Protocol):
    """``_crypto.Ed25519Signer`` (FORMAT.md section 15)."""

    @property
    def public(self) -> bytes: ...
    def sign(self, message: bytes, /) -> bytes: ...


class Session(Protocol):
    """``_crypto.Handshake`` and ``_crypto.SharedKeySession`` (FORMAT.md sections 12.1, 12.2)."""

    @property
    def msg_lens(self) -> tuple[int, int, int]: ...
    def start(self) -> bytes: ...
    def respond(self, msg1: bytes, /) -> bytes: ...
    def finish(self, msg2: bytes, /) -> bytes: ...
    def confirm(self, msg3: bytes, /) -> None: ...


class Keyring(Protocol):
    """``gateway._Keyring``: a gateway's key material (FORMAT.md section 12)."""

    def handshake_new(self) -> _crypto.Handshake | _crypto.SharedKeySession: ...
    def new_stream(
        self,
        session: _crypto.Handshake | _crypto.SharedKeySession | None,
        container_id: bytes | None,
        block_size: int,
        /,
    ) -> tuple[bytes, _crypto.ContainerKeys]: ...
    def accept_stream(
        self, session: _crypto.Handshake | _crypto.SharedKeySession | None, header: bytes, /
    ) -> _crypto.ContainerKeys: ...
    def storage_header(
        self,
        session: _crypto.Handshake | _crypto.SharedKeySession | None,
        header: bytes,
        keys: _crypto.ContainerKeys,
        /,
    ) -> bytes: ...
    def reply_id(self, container_id: bytes, /) -> bytes: ...
    def log(self, level: str, line: str, /) -> None: ...
    def seal_stream_frames(self, jobs: list[_crypto.SealJob], /) -> list[Exception | None]: ...
    def open_stream_frames(self, jobs: list[_crypto.OpenJob], /) -> list[tuple[bytes, bool] | Exception]: ...


class Source(Protocol):
    """A binary file object read sequentially (plaintext to pack, a container to recover)."""

    def readinto(self, b: memoryview, /) -> int | None: ...


class RandomSource(Protocol):
    """A seekable binary file object holding a container."""

    def seek(self, offset: int, whence: int, /) -> int: ...
    def readinto(self, b: memoryview, /) -> int | None: ...


class Sink(Protocol):
    """A binary file object written sequentially."""

    def write(self, b: memoryview | bytes, /) -> int | None: ...


class Progress(Protocol):
    """``progress(done, total)`` of pack and unpack."""

    def __call__(self, done: int, total: int | None, /) -> object: ...


class Opener(Protocol):
    """The SeekServer's ``open(path)``: a loaded ``_core.Reader``."""

    def __call__(self, path: str, /) -> _core.Reader: ...


class WholeOpener(Protocol):
    """The SeekServer's ``open_whole(path)``: ``open`` for a request that reads the whole
    container in order (on object storage the open's first GET streams the object on)."""

    def __call__(self, path: str, /) -> _core.Reader: ...


class MemberOpener(Protocol):
    """The SeekServer's ``open_member(path, member)``: a loaded ``_core.Reader`` whose window is
    the member of the archive at ``path`` (FORMAT.md section 16)."""

    def __call__(self, path: str, member: str, /) -> _core.Reader: ...


class ServerLog(Protocol):
    """The SeekServer's ``log(level, line)``; ``level`` ``access`` carries an access-log line."""

    def __call__(self, level: str, line: str, /) -> None: ...


class UrlVerifier(Protocol):
    """The SeekServer's ``verify_url(url_path, query)``: ``valid``, ``expired`` or ``invalid``."""

    def __call__(self, url_path: str, query: str, /) -> str: ...


IMPLEMENTATIONS: dict[str, list[tuple[type, str | None]]] = {
    "ContainerKeys": [(_crypto.ContainerKeys, None)],
    "Signer": [(_crypto.Ed25519Signer, None)],
    "Session": [(_crypto.Handshake, None), (_crypto.SharedKeySession, None)],
    "Keyring": [(gateway._Keyring, None)],
    "Source": [(io.BytesIO, None), (io.BufferedReader, None), (io.FileIO, None), (_container._QueueSource, None)],
    "RandomSource": [(io.BytesIO, None), (io.BufferedReader, None), (io.FileIO, None)],
    "Sink": [(io.BytesIO, None), (io.BufferedWriter, None), (io.FileIO, None)],
    "Progress": [],
    "Opener": [(server.SeekServer, "_open")],
    "WholeOpener": [(server.SeekServer, "_open_whole")],
    "MemberOpener": [(server.SeekServer, "_open_member")],
    "ServerLog": [(server.SeekServer, "_log")],
    "UrlVerifier": [(server.SeekServer, "_verify_url")],
}
"""For each object kind of ``_core.PYTHON_CALLS``: the classes that implement it, and for a
callable kind (``__call__``) the method of that class that Rust is given."""


def accepts_positional(cls: type, name: str, n_args: int) -> bool:
    """Whether ``cls().name(*n_args positional arguments)`` binds (``self`` is added unless it
    is a static method)."""
    static = isinstance(inspect.getattr_static(cls, name), staticmethod)
    sig = inspect.signature(getattr(cls, name))
    try:
        sig.bind(*range(n_args + (0 if static else 1)))
    except TypeError:
        return False
    return True


def _conformance(
    keys: _crypto.ContainerKeys,
    signer: _crypto.Ed25519Signer,
    handshake: _crypto.Handshake,
    shared: _crypto.SharedKeySession,
    keyring: gateway._Keyring,
    seek_server: server.SeekServer,
    queue_source: _container._QueueSource,
    stream: io.BytesIO,
    progress: Callable[[int, int | None], object],
) -> None:
    """Never called: mypy checks that each implementation satisfies its protocol."""
    _keys: ContainerKeys = keys
    _signer: Signer = signer
    _sessions: tuple[Session, Session] = (handshake, shared)
    _keyring: Keyring = keyring
    _opener: Opener = seek_server._open
    _whole_opener: WholeOpener = seek_server._open_whole
    _member_opener: MemberOpener = seek_server._open_member
    _log: ServerLog = seek_server._log
    _verify: UrlVerifier = seek_server._verify_url
    _sources: tuple[Source, Source] = (queue_source, stream)
    _random: RandomSource = stream
    _sink: Sink = stream
    _progress: Progress = progress
