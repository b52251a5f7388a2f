"""GatewayServer: an encryption boundary for live TCP streams (FORMAT.md section 12).

Modes:

- ``reflect``: encrypt what a client sends and send the V6 stream back to it.
- ``router``: encrypt toward ``target`` (another gateway) and decrypt the replies, so a
  client talks plaintext to the router while the network between sees only V6 frames.
- ``decrypt``: the egress side: V6 stream in, plaintext out to ``target``; replies are
  encrypted on their way back. A router whose target is another router adds a layer; each
  decrypt gateway peels one.
- ``sink``: store each incoming stream (V6, or plaintext with ``sink_raw=True``) as a
  container in ``sink_dir`` (a directory, or ``s3://BUCKET/PREFIX``: one multipart upload per
  stream); a cut connection leaves a container marked incomplete. With
  ``sign_with`` (an Ed25519 key) the sink signs every container it stores (FORMAT.md 12, 15).

Gateways that talk to each other share a 32-byte key file, or hold X25519 identities and
pin each other's public keys. Each connection first agrees on a fresh session (both sides
contribute randomness), and each stream MK is derived from it and from the stream's
direction, so no key crosses the wire and no stream can be replayed or reflected
(FORMAT.md section 12.2). A stream that fails authentication or ends without its FINAL
frame makes the gateway reset its plaintext side: a cut is never a clean end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from . import _core, _crypto, _signing, _store
from ._container import build_header
from ._pubkeys import decode_public_key, encode_public_key
from ._service import BackgroundService, check_int
from ._service import split_hostport as _split_hostport
from .errors import AuthenticationError

__all__ = ["GatewayServer", "decode_public_key", "encode_public_key", "generate_identity"]

log = logging.getLogger("qeltrix_v6.gateway")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MODES = ("reflect", "router", "decrypt", "sink")
REPLY_LABEL = b"qeltrix-v6 reply"


KIND_HANDSHAKE: int = _core.KIND_HANDSHAKE


class _Keyring:
    """Stream keys for gateways (the Rust loops call these methods; their order and arity are
    the contract of ``rust/qeltrix-py/src/calls.rs``, see :mod:`qeltrix_v6._contract`).

    Every connection between gateways first agrees on a session (FORMAT.md section 12):
    shared-key mode (``key``) exchanges fresh nonces, pinned-key mode (``identity`` and
    ``peers``) runs an authenticated X25519 handshake. Each stream MK is derived from the
    session, the ``container_id`` and the stream's direction, so no MK crosses the wire and
    nothing recorded on another connection, or reflected, authenticates. Streams with no peer
    gateway (reflect, raw sink) wrap a random MK under ``key``.
    """

    def __init__(
        self,
        key: bytes | None,
        cipher_id: int,
        identity: bytes | None = None,
        peers: frozenset[bytes] = frozenset(),
        *,
        sink_signed: bool = False,
        accept_keys: tuple[bytes, ...] = (),
    ) -> None:
        self._key = key
        self._accept_keys = accept_keys
        self._cipher_id = cipher_id
        self._identity = identity
        self._peers = peers
        self._sink_signed = sink_signed

    def reload(self, key: bytes | None, accept_keys: tuple[bytes, ...], peers: frozenset[bytes] | None) -> None:
        """New key material for connections from now on (open ones keep their session): each
        attribute is replaced in one assignment, so a handshake reads either old or new."""
        self._key, self._accept_keys = key, accept_keys
        if peers is not None:
            self._peers = peers

    def handshake_new(self) -> _crypto.Handshake | _crypto.SharedKeySession:
        if self._identity is None:
            assert self._key is not None
            return _crypto.SharedKeySession(self._key, also_accept=self._accept_keys)
        return _crypto.Handshake(self._identity, self._peers)

    def new_stream(
        self,
        session: _crypto.Handshake | _crypto.SharedKeySession | None,
        container_id: bytes | None,
        block_size: int,
    ) -> tuple[bytes, _crypto.ContainerKeys]:
        cid = container_id if container_id is not None else _crypto.random_bytes(_core.CONTAINER_ID_LEN)
        if session is not None:
            mk = session.send_mk(cid)
            stanza = (KIND_HANDSHAKE, b"")
        else:
            assert self._key is not None
            mk = _crypto.random_bytes(_crypto.MK_LEN)
            stanza = _crypto.key_stanza(self._key, mk, cid)
        return build_header(mk, cid, self._cipher_id, block_size, 0, [stanza])

    def storage_header(
        self,
        session: _crypto.Handshake | _crypto.SharedKeySession | None,
        header: bytes,
        keys: _crypto.ContainerKeys | None = None,
    ) -> bytes:
        """The header a sink stores: a stream's MK dies with its session, so it is re-wrapped
        under the sink's own key (the frames do not change). A signing sink's header has SIGNED
        set under its header_mac (FORMAT.md section 15); a raw sink's stream (no session, its MK
        already wrapped under the sink's key, ``keys`` its keys) is then sealed again with it."""
        if session is None and not self._sink_signed:
            return header
        assert self._key is not None
        f = _core.parse_header(header)
        if session is not None:
            mk = session.recv_mk(f.container_id)
            stanzas = [_crypto.key_stanza(self._key, mk, f.container_id)]
        else:
            assert keys is not None
            mk, stanzas = keys.mk, list(f.stanzas)
        signed = self._sink_signed
        return build_header(mk, f.container_id, f.cipher_id, f.block_size, 0, stanzas, signed=signed)[0]

    def accept_stream(
        self, session: _crypto.Handshake | _crypto.SharedKeySession | None, header: bytes
    ) -> _crypto.ContainerKeys:
        if session is None:
            # Every stream between gateways is keyed from a fresh session: a stream that
            # needs none could be a recording.
            raise AuthenticationError("a stream from a peer gateway needs a session")
        fields = _core.parse_header(header)
        if _crypto.sha256(fields.header_checksummed) != fields.header_sha256:
            raise AuthenticationError("stream header is corrupt (checksum mismatch)")
        if [k for k, _ in fields.stanzas] != [KIND_HANDSHAKE]:
            raise AuthenticationError("a gateway stream header has exactly one handshake stanza")
        keys = _crypto.ContainerKeys(session.recv_mk(fields.container_id), fields.container_id, fields.cipher_id)
        keys.verify_header_mac(fields.header_maced, fields.header_mac)
        return keys

    @staticmethod
    def reply_id(container_id: bytes) -> bytes:
        return _crypto.sha256(REPLY_LABEL + container_id)[:16]

    @staticmethod
    def log(level: str, line: str) -> None:
        log.log(_LEVELS.get(level, logging.INFO), "%s", line)


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

    ``accept_keys`` are more shared keys a responding gateway (decrypt, sink) accepts from its
    peers, for a key rotation: new streams use ``key``. :meth:`reload` swaps key material
    without dropping open connections. ``metrics="HOST:PORT"`` serves Prometheus text at
    ``/metrics`` and ``/healthz`` there; :meth:`drain` stops accepting and waits for the open
    connections to finish.

    A sink given ``sign_with`` (an Ed25519 private key: PEM bytes, a path, or an
    ``Ed25519Signer``, as for :func:`pack`) stores every stream as a signed container, cut
    streams included; readers check it with ``signers=[...]``.
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
        handshake_timeout: float = 10.0,
        sign_with: _signing.SignWith | None = None,
        accept_keys: Iterable[bytes] = (),
        metrics: str | tuple[str, int] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if sign_with is not None and mode != "sink":
            raise ValueError(f"only a sink signs what it stores: sign_with is not for mode {mode!r}")
        signer = _signing.load_signer(sign_with) if sign_with is not None else None
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
        accepted = tuple(bytes(k) for k in accept_keys)
        if any(len(k) != _crypto.KEY_LEN for k in accepted):
            raise ValueError("every key in accept_keys is a 32-byte shared key")
        if mode in ("router", "decrypt") and target is None:
            raise ValueError(f"mode {mode!r} needs a target HOST:PORT")
        remote = mode == "sink" and _store.is_url(sink_dir)
        if mode == "sink" and not remote and (sink_dir is None or not os.path.isdir(sink_dir)):
            raise ValueError("sink mode needs an existing sink_dir (a directory or s3://BUCKET/PREFIX)")
        if cipher not in _crypto.CIPHERS:
            raise ValueError(f"unknown cipher {cipher!r}")
        if not _core.MIN_BLOCK_SIZE <= block_size <= _core.MAX_STREAM_BLOCK_SIZE:
            raise ValueError(
                f"block_size must be between {_core.MIN_BLOCK_SIZE} bytes and {_core.MAX_STREAM_BLOCK_SIZE >> 20} MiB"
            )
        if not handshake_timeout > 0:
            raise ValueError("handshake_timeout must be positive")
        max_connections = _raise_open_file_limit(check_int("max_connections", max_connections, 1, 1 << 20))
        self.mode = mode
        self._listen = _split_hostport(listen)
        tgt = None
        if target is not None:
            th, tp = _split_hostport(target)
            tgt = f"[{th}]:{tp}" if ":" in th else f"{th}:{tp}"
        self._keyring = _Keyring(
            bytes(key) if key is not None else None,
            _crypto.CIPHERS[cipher],
            identity=identity,
            peers=pinned,
            sink_signed=signer is not None,
            accept_keys=accepted,
        )
        self._settings: dict[str, Any] = {
            "target": tgt,
            # An object-storage sink is checked (credentials, bucket) here, before listening.
            "sink_store": _store.create_sink(str(sink_dir)) if remote else None,
            "sink_dir": os.fspath(sink_dir) if sink_dir is not None and not remote else None,
            "sink_raw": sink_raw,
            "block_size": block_size,
            "flush_delay": flush_delay,
            "max_connections": max_connections,
            "idle_timeout": idle_timeout,
            "connect_timeout": connect_timeout,
            "stats_interval": stats_interval,
            "handshake_timeout": handshake_timeout,
            "signer": signer,
            "metrics": _split_hostport(metrics) if metrics is not None else None,
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

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The bound ``(host, port)`` of ``/metrics`` and ``/healthz``, or ``None``."""
        if self._core is None:
            return None
        addr = self._core.metrics_address
        return (str(addr[0]), int(addr[1])) if addr is not None else None

    def reload(
        self, *, key: bytes | None = None, accept_keys: Iterable[bytes] = (), peers: Iterable[bytes | str] | None = None
    ) -> None:
        """Use new key material for connections accepted from now on; open connections keep
        theirs. ``key`` (shared-key mode) is the key new streams use, ``accept_keys`` are also
        accepted from peers; ``peers`` replaces the pinned public keys."""
        kr = self._keyring
        if key is not None and len(key) != _crypto.KEY_LEN:
            raise ValueError("a shared key is 32 bytes")
        accepted = tuple(bytes(k) for k in accept_keys)
        if any(len(k) != _crypto.KEY_LEN for k in accepted):
            raise ValueError("every key in accept_keys is a 32-byte shared key")
        pinned = (
            frozenset(decode_public_key(p) if isinstance(p, str) else bytes(p) for p in peers)
            if peers is not None
            else None
        )
        kr.reload(bytes(key) if key is not None else kr._key, accepted, pinned)

    def drain(self, timeout: float) -> int:
        """Stop accepting, wait up to ``timeout`` seconds for open connections to end, then
        stop. Returns how many were still open (they are cut when the process exits)."""
        if self._core is None:
            return 0
        self._core.stop_accepting()
        deadline = time.monotonic() + max(0.0, timeout)
        active = int(self._core.stats().get("active", 0))
        while active and time.monotonic() < deadline:
            time.sleep(0.05)
            active = int(self._core.stats().get("active", 0))
        self.stop()
        return active


# Descriptors a gateway needs besides its connections: listener, logs, Python's own files.
_FD_MARGIN = 64
# Each connection holds up to two sockets (the accepted peer and the target).
_FDS_PER_CONNECTION = 2


def _raise_open_file_limit(max_connections: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to what ``max_connections`` needs (FORMAT.md 12.2).

    When the hard limit is too low, log a warning and return the connection limit it allows.
    """
    try:
        import resource
    except ImportError:  # not POSIX: nothing to raise
        return max_connections
    need = max_connections * _FDS_PER_CONNECTION + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new_soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, new_soft, e)
    if soft != resource.RLIM_INFINITY and soft < need:
        allowed = max(1, (soft - _FD_MARGIN) // _FDS_PER_CONNECTION)
        log.warning(
            "the open-file limit (%d, hard limit %s) allows only %d connections, not %d: using %d "
            "(raise it with ulimit -n)",
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            allowed,
            max_connections,
            allowed,
        )
        return allowed
    return max_connections


def generate_identity() -> tuple[bytes, str]:
    """A new gateway identity: ``(private_key, public_key_text)`` for ``identity=`` / ``peers=``."""
    private, public = _crypto.x25519_generate()
    return private, encode_public_key(public)
