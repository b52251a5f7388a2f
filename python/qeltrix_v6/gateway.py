"""GatewayServer: an encryption boundary for live TCP streams (FORMAT.md section 12).

Modes:

- ``reflect``: encrypt what a client sends and send the V6 stream back to it.
- ``router``: encrypt toward ``target`` (another gateway) and decrypt the replies, so a
  client talks plaintext to the router while the network between sees only V6 frames.
- ``decrypt``: the egress side: V6 stream in, plaintext out to ``target``; replies are
  encrypted on their way back. A router whose target is another router adds a layer; each
  decrypt gateway peels one.
- ``sink``: store each incoming stream (V6, or plaintext with ``sink_raw=True``) as a
  container in ``sink_dir``; a cut connection leaves a container marked incomplete.

Gateways that talk to each other share a 32-byte key file: each connection gets a fresh
stream MK in each direction, wrapped under the shared key, so no long-term key crosses the
wire, and each reply stream is bound to its request stream.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from . import _core, _crypto
from ._container import build_header, unlock_header
from ._service import BackgroundService
from .errors import AuthenticationError

__all__ = ["GatewayServer", "decode_public_key", "encode_public_key", "generate_identity"]

log = logging.getLogger("qeltrix_v6.gateway")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MODES = ("reflect", "router", "decrypt", "sink")
REPLY_LABEL = b"qeltrix-v6 reply"


KIND_HANDSHAKE = 16
PUBKEY_PREFIX = "qltx-x25519:"


def encode_public_key(public: bytes) -> str:
    """A copy-pasteable X25519 public key: a type prefix, base64url, a 4-byte checksum."""
    if len(public) != _crypto.X25519_LEN:
        raise ValueError("an X25519 public key is 32 bytes")
    return PUBKEY_PREFIX + base64.urlsafe_b64encode(public + _crypto.sha256(public)[:4]).decode().rstrip("=")


def decode_public_key(text: str) -> bytes:
    """Parse :func:`encode_public_key`'s format, checking prefix and checksum."""
    text = text.strip()
    if not text.startswith(PUBKEY_PREFIX):
        raise ValueError(f"a Qeltrix X25519 public key starts with {PUBKEY_PREFIX!r}")
    try:
        raw = base64.urlsafe_b64decode(text[len(PUBKEY_PREFIX) :] + "==")
    except ValueError:
        raise ValueError("the public key is not valid base64url") from None
    if len(raw) != 36 or _crypto.sha256(raw[:32])[:4] != raw[32:]:
        raise ValueError("the public key is damaged (bad length or checksum): copy it again")
    return raw[:32]


class _Keyring:
    """Stream keys for gateways (the Rust loops call these methods).

    Shared-key mode: each stream MK is wrapped under the gateways' shared key. Pinned-key mode
    (``identity`` and ``peers``): an authenticated X25519 handshake on each connection derives
    the stream MKs; no MK crosses the wire and a peer whose key is not pinned is refused.
    """

    def __init__(
        self, key: bytes | None, cipher_id: int, identity: bytes | None = None, peers: frozenset[bytes] = frozenset()
    ) -> None:
        self._key = key
        self._cipher_id = cipher_id
        self._identity = identity
        self._peers = peers

    def handshake_new(self) -> _crypto.Handshake | None:
        if self._identity is None:
            return None
        return _crypto.Handshake(self._identity, self._peers)

    def new_stream(
        self, container_id: bytes | None, block_size: int, session: _crypto.Handshake | None = None
    ) -> tuple[bytes, _crypto.ContainerKeys]:
        cid = container_id if container_id is not None else _crypto.random_bytes(16)
        if session is not None:
            mk = session.stream_mk(cid)
            stanza = (KIND_HANDSHAKE, b"")
        else:
            assert self._key is not None
            mk = _crypto.random_bytes(_crypto.MK_LEN)
            stanza = _crypto.key_stanza(self._key, mk, cid)
        return build_header(mk, cid, self._cipher_id, block_size, 0, [stanza])

    def storage_header(self, header: bytes, session: _crypto.Handshake | None = None) -> bytes:
        """The header a sink stores: a handshake stream's MK dies with its session, so it is
        re-wrapped under the sink's own key (the frames do not change)."""
        if session is None:
            return header
        assert self._key is not None
        f = SimpleNamespace(**_core.parse_header(header))
        mk = session.stream_mk(f.container_id)
        stanza = _crypto.key_stanza(self._key, mk, f.container_id)
        return build_header(mk, f.container_id, f.cipher_id, f.block_size, 0, [stanza])[0]

    def accept_stream(self, header: bytes, session: _crypto.Handshake | None = None) -> _crypto.ContainerKeys:
        fields = SimpleNamespace(**_core.parse_header(header))
        if session is None:
            return unlock_header(fields, key=self._key)
        if _crypto.sha256(fields.header_checksummed) != fields.header_sha256:
            raise AuthenticationError("stream header is corrupt (checksum mismatch)")
        keys = _crypto.ContainerKeys(session.stream_mk(fields.container_id), fields.container_id, fields.cipher_id)
        keys.verify_header_mac(fields.header_maced, fields.header_mac)
        return keys

    @staticmethod
    def reply_id(container_id: bytes) -> bytes:
        return _crypto.sha256(REPLY_LABEL + container_id)[:16]

    @staticmethod
    def log(level: str, line: str) -> None:
        log.log(_LEVELS.get(level, logging.INFO), "%s", line)


def _split_hostport(value: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(value, tuple):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class GatewayServer(BackgroundService):
    """A TCP gateway in one of the modes above.

    >>> import os, socket, qeltrix_v6
    >>> key = os.urandom(32)
    >>> with qeltrix_v6.GatewayServer("reflect", "127.0.0.1:0", key=key) as gw:
    ...     with socket.create_connection(gw.address) as s:
    ...         s.sendall(b"hello"); s.shutdown(socket.SHUT_WR)
    ...         stream = b"".join(iter(lambda: s.recv(65536), b""))
    >>> stream[:8], b"hello" in stream
    (b'QLTXV6\\r\\n', False)
    """

    def __init__(
        self,
        mode: str,
        listen: str | tuple[str, int],
        *,
        target: str | tuple[str, int] | None = None,
        key: bytes | None = None,
        identity: bytes | None = None,
        peers: Iterable[bytes | str] = (),
        sink_dir: str | os.PathLike[str] | None = None,
        sink_raw: bool = False,
        cipher: str = "aes-256-gcm",
        block_size: int = 256 << 10,
        flush_delay: float = 0.0,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        stats_interval: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        pinned = frozenset(decode_public_key(p) if isinstance(p, str) else bytes(p) for p in peers)
        if identity is not None:
            if len(identity) != _crypto.X25519_LEN:
                raise ValueError("an identity is a 32-byte X25519 private key")
            if (not pinned and mode in ("router", "decrypt")) or (mode == "sink" and not sink_raw and not pinned):
                raise ValueError("pinned-key mode needs the peers' public keys")
            if mode in ("reflect", "sink") and key is None:
                raise ValueError(f"mode {mode!r} stores or returns streams: it needs a key as well as an identity")
        elif key is None or len(key) != _crypto.KEY_LEN:
            raise ValueError("a 32-byte shared key, or an identity and pinned peers, is required")
        if mode in ("router", "decrypt") and target is None:
            raise ValueError(f"mode {mode!r} needs a target HOST:PORT")
        if mode == "sink" and (sink_dir is None or not os.path.isdir(sink_dir)):
            raise ValueError("sink mode needs an existing sink_dir")
        if cipher not in _crypto.CIPHERS:
            raise ValueError(f"unknown cipher {cipher!r}")
        if not _core.MIN_BLOCK_SIZE <= block_size <= 16 << 20:
            raise ValueError("block_size must be between 16 bytes and 16 MiB")
        self.mode = mode
        self._listen = _split_hostport(listen)
        tgt = None
        if target is not None:
            th, tp = _split_hostport(target)
            tgt = f"[{th}]:{tp}" if ":" in th else f"{th}:{tp}"
        self._keyring = _Keyring(
            bytes(key) if key is not None else None, _crypto.CIPHERS[cipher], identity=identity, peers=pinned
        )
        self._settings: dict[str, Any] = {
            "target": tgt,
            "sink_dir": os.fspath(sink_dir) if sink_dir is not None else None,
            "sink_raw": sink_raw,
            "block_size": block_size,
            "flush_delay": flush_delay,
            "max_connections": max_connections,
            "idle_timeout": idle_timeout,
            "connect_timeout": connect_timeout,
            "stats_interval": stats_interval,
        }
        super().__init__()

    def _make_core(self) -> _core.GatewayCore:
        host, port = self._listen
        return _core.GatewayCore(self.mode, host, port, self._keyring, **self._settings)

    def _started(self) -> None:
        log.info("%s gateway listening on %s:%s", self.mode, *self.address)

    def stats(self) -> dict[str, Any]:
        """Aggregate counters plus ``per_connection``: bytes in/out, blocks, duration, errors."""
        return self._core.stats() if self._core is not None else {}


def generate_identity() -> tuple[bytes, str]:
    """A new gateway identity: ``(private_key, public_key_text)`` for ``identity=`` / ``peers=``."""
    private, public = _crypto.x25519_generate()
    return private, encode_public_key(public)
