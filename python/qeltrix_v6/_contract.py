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
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _container, _core, _crypto, gateway, server


class ContainerKeys(Protocol):
    """``_crypto.ContainerKeys``: the per-container crypto (FORMAT.md sections 4-6, 15)."""

    def seal_stream_frame(
        self, block_index: int, meta_flags: int, inbuf: memoryview, pt_len: int, outbuf: memoryview, /
    ) -> None: ...
    def frame_calls(self) -> _crypto.FrameCalls: ...
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


class FrameCalls(Protocol):
    """``_crypto.FrameCalls``: the ``cryptography`` objects of one stream's frames, read once
    per stream; the calls the gateway core then makes on them are the protocols below."""

    @property
    def mk(self) -> bytes: ...
    @property
    def cdk_info(self) -> bytes: ...
    @property
    def container_id(self) -> bytes: ...
    @property
    def aead(self) -> AeadClass: ...
    @property
    def meta_aead(self) -> Aead: ...
    @property
    def hkdf(self) -> HkdfClass: ...
    @property
    def sha256(self) -> object: ...
    @property
    def hash(self) -> Hash: ...
    @property
    def urandom(self) -> Urandom: ...
    @property
    def invalid_tag(self) -> type[Exception]: ...


class Hash(Protocol):
    """``cryptography``'s ``hashes.Hash`` (SHA-256)."""

    def copy(self) -> Hash: ...
    def update(self, data: memoryview, /) -> None: ...
    def finalize(self) -> bytes: ...


class HkdfClass(Protocol):
    """``cryptography``'s ``HKDF`` class: ``HKDF(algorithm, length, salt, info)``."""

    def __call__(self, algorithm: Any, length: int, salt: bytes, info: bytes, /) -> Kdf: ...


class Kdf(Protocol):
    """An ``HKDF`` instance."""

    def derive(self, key_material: bytes, /) -> bytes: ...


class AeadClass(Protocol):
    """``AESGCM`` or ``ChaCha20Poly1305``: ``AeadClass(key)``."""

    def __call__(self, key: bytes, /) -> Aead: ...


class Aead(Protocol):
    """An ``AESGCM`` or ``ChaCha20Poly1305`` instance."""

    def encrypt_into(self, nonce: bytes, data: memoryview, associated_data: bytes, buf: memoryview, /) -> int: ...
    def decrypt_into(self, nonce: bytes, data: memoryview, associated_data: bytes, buf: memoryview, /) -> int: ...


class Urandom(Protocol):
    """``os.urandom``."""

    def __call__(self, size: int, /) -> bytes: ...


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
    "FrameCalls": [(_crypto.FrameCalls, None)],
    # `cryptography`'s own classes (named here only to check the calls; `_crypto` uses them).
    "Hash": [(hashes.Hash, None)],
    "HkdfClass": [],
    "Kdf": [(HKDF, None)],
    "AeadClass": [],
    "Aead": [(AESGCM, None), (ChaCha20Poly1305, None)],
    "Urandom": [],
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
    frame_calls: _crypto.FrameCalls,
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
    _frame_calls: FrameCalls = frame_calls
    _hash: Hash = frame_calls.hash
    _hkdf: HkdfClass = frame_calls.hkdf
    _aead: AeadClass = frame_calls.aead
    _meta_aead: Aead = frame_calls.meta_aead
    _urandom: Urandom = frame_calls.urandom
