"""SeekServer: serve plaintext byte ranges of encrypted containers over HTTP.

``GET /a/b.mp4`` answers with the plaintext of ``ROOT/a/b.mp4.qltx``, decrypting only the
blocks a request needs (RFC 9110 ranges, multipart/byteranges, ETag/If-Range, keep-alive).
The HTTP loop runs in Rust (hyper on tokio); containers are opened here, with the server's
credential, and decrypted through the same crypto layer as everything else.

It serves plaintext, so it binds to 127.0.0.1 unless told otherwise; use ``token=`` and TLS
(``tls_cert=``/``tls_key=``) for anything else. With ``signers=[...]`` it serves only
containers signed by one of those ``qltx-ed25519:`` keys, and checks every block it serves
against the signature (docs/FORMAT.md section 15); others are refused with an error status.

It speaks HTTP/1.1 and HTTP/2 (over TLS by ALPN ``h2``, and h2c with prior knowledge).
Operations: ``access_log=True`` (or ``"json"``) writes one line per response to the logger
``qeltrix_v6.server.access`` (combined log format or JSON lines, with the bytes really sent),
:meth:`SeekServer.stats` returns the counters, ``metrics="HOST:PORT"`` serves them as
Prometheus text at ``/metrics`` with a ``/healthz``, and ``stop(drain=SECONDS)`` (or
``drain_timeout=``) lets responses in flight finish before closing.
For browsers and CDNs: ``url_key=`` accepts expiring signed URLs (:func:`qeltrix_v6.sign_url`)
beside the token, or instead of it; ``cors_origins=`` lets pages on other origins read
responses; ``cache_control=`` sets the ``Cache-Control`` of container responses;
``directory_listing=True`` answers ``GET /dir/`` with the containers there (HTML or JSON).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from . import _core, _signed_url, _signing, _store
from ._container import _Opened, incomplete_message, open_reader
from ._kms import KmsUnavailableError
from ._service import BackgroundService, check_int, split_hostport
from .errors import QeltrixError, QeltrixIOError, TruncatedError

__all__ = ["SeekServer"]

log = logging.getLogger("qeltrix_v6.server")
access_logger = logging.getLogger("qeltrix_v6.server.access")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
ACCESS_LOG_FORMATS = ("combined", "json")
DEFAULT_CACHE_CONTROL = "private, no-transform"
# An origin as a browser serialises it: scheme "://" host [":" port], nothing after.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9._~%!$&'()*+,;=-]+)(:[0-9]{1,5})?", re.I)


def check_cors_origin(origin: str) -> str:
    """``origin`` if it is ``*`` or ``scheme://host[:port]`` (no path, no trailing slash)."""
    if origin == "*" or _ORIGIN.fullmatch(origin):
        return origin
    raise ValueError(f"{origin!r} is not an origin; write it as scheme://host[:port] (e.g. https://example.com) or *")


def check_cache_control(value: str) -> str:
    """``value`` if it can be sent as a header value (visible ASCII and spaces)."""
    if value.strip() and all(0x20 <= ord(c) < 0x7F or c == "\t" for c in value):
        return value.strip()
    raise ValueError(f"{value!r} is not a valid Cache-Control value")


def served_reader(opened: _Opened, allow_incomplete: bool) -> _core.Reader:
    """The Reader of an opened container, if it may be served: an INCOMPLETE one (a cut
    stream) is refused unless ``allow_incomplete``, since an HTTP client would take its end
    for the end of the data."""
    reader = opened.reader
    opened.close()  # the Reader keeps its own descriptor
    if reader.incomplete and not allow_incomplete:
        raise TruncatedError(incomplete_message(None, reader.block_count, reader.pt_total_len))
    return reader


DEFAULT_BLOCK_CACHE = 64 << 20
"""Bytes of decrypted blocks a SeekServer keeps for reuse, by default."""

FileVersion = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class Unlocker:
    """Opens each container once, however many requests ask for it at the same time.

    Opening under a passphrase runs Argon2id (0.1-5 s): concurrent first requests for one file
    wait for a single open (one lock per file, from a fixed set of stripes, so memory stays
    bounded), recent successes are reused, and failures are remembered, so a container the
    server's credential does not open costs one KDF run, not one per request. Both are keyed by
    the file's version (device, inode, size, mtime), so a changed file is opened afresh.
    Transient failures (I/O, an unreachable KMS) are not remembered.
    """

    STRIPES = 64

    def __init__(self, open_fn: Callable[[str], _core.Reader], max_recent: int = 16, max_failures: int = 1024) -> None:
        self._open_fn = open_fn
        self._locks = [threading.Lock() for _ in range(self.STRIPES)]
        self._guard = threading.Lock()
        self._recent: OrderedDict[str, tuple[FileVersion, _core.Reader]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[FileVersion, QeltrixError]] = OrderedDict()
        self._max_recent = max_recent
        self._max_failures = max_failures

    @staticmethod
    def _version(path: str) -> FileVersion:
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def _remember(
        self,
        table: OrderedDict[str, tuple[FileVersion, object]],
        path: str,
        entry: tuple[FileVersion, object],
        cap: int,
    ) -> None:
        with self._guard:
            table[path] = entry
            table.move_to_end(path)
            while len(table) > cap:
                table.popitem(last=False)

    def open(self, path: str) -> _core.Reader:
        with self._locks[zlib.crc32(path.encode("utf-8", "surrogateescape")) % self.STRIPES]:
            version = self._version(path)
            with self._guard:
                failed = self._failures.get(path)
                recent = self._recent.get(path)
            if failed is not None and failed[0] == version:
                raise failed[1]
            if recent is not None and recent[0] == version:
                return recent[1]
            try:
                reader = self._open_fn(path)
            except (QeltrixIOError, KmsUnavailableError):
                raise  # transient: try again next time
            except QeltrixError as e:
                self._remember(self._failures, path, (version, e), self._max_failures)  # type: ignore[arg-type]
                raise
            self._remember(self._recent, path, (version, reader), self._max_recent)  # type: ignore[arg-type]
            return reader


class SeekServer(BackgroundService):
    """An HTTP server for the containers under ``root``: a directory, or ``s3://BUCKET/PREFIX``
    (``GET /a/b.mp4`` serves ``PREFIX/a/b.mp4.qltx``; an opened object is reused for
    ``remote_ttl`` seconds, its ETag and Last-Modified come from the object, the same on every
    replica).

    >>> import os, tempfile, urllib.request, qeltrix_v6
    >>> root = tempfile.mkdtemp()
    >>> key = os.urandom(32)
    >>> _ = qeltrix_v6.pack(__import__("io").BytesIO(b"0123456789"), os.path.join(root, "d.txt.qltx"), key=key)
    >>> with qeltrix_v6.SeekServer(root, key=key) as server:
    ...     req = urllib.request.Request(server.url + "/d.txt", headers={"Range": "bytes=2-4"})
    ...     urllib.request.urlopen(req).read()
    b'234'
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        passphrase: str | bytes | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        max_connections: int = 1024,
        max_connections_per_client: int = 64,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        block_cache: int = DEFAULT_BLOCK_CACHE,
        access_log: bool | str = False,
        workers: int = 2,
        allow_incomplete: bool = False,
        signers: _signing.SignersArg = None,
        metrics: str | tuple[str, int] | None = None,
        drain_timeout: float = 0.0,
        url_key: bytes | None = None,
        cors_origins: Iterable[str] = (),
        cache_control: str = DEFAULT_CACHE_CONTROL,
        directory_listing: bool = False,
        remote_ttl: float = 5.0,
    ) -> None:
        if key is None and passphrase is None:
            raise ValueError("a key or a passphrase is required to open the containers")
        self._remote = _store.is_url(root)
        if self._remote:
            # s3://BUCKET/PREFIX: GET /a/b.mp4 serves PREFIX/a/b.mp4.qltx. Nothing is kept but
            # recently opened containers, so replicas over one bucket answer alike.
            if directory_listing:
                raise ValueError("directory listings are not available for an s3:// root")
            _store.options()  # fail now, not on the first request, without credentials
        elif not os.path.isdir(root):
            raise ValueError(f"{os.fspath(root)} is not a directory")
        if access_log is True:
            access_log = "combined"
        if access_log and access_log not in ACCESS_LOG_FORMATS:
            raise ValueError(f"access_log must be True, False or one of {', '.join(ACCESS_LOG_FORMATS)}")
        if drain_timeout < 0:
            raise ValueError("drain_timeout must be >= 0")
        self.root = os.fspath(root)
        self.drain_timeout = drain_timeout
        self._final_stats: dict[str, int | dict[str, int]] = {}
        self._key = key
        self._passphrase = passphrase
        self._settings = {
            "host": host,
            "port": check_int("port", port, 0, 65535),
            "token": token,
            "tls_cert": os.fspath(tls_cert) if tls_cert is not None else None,
            "tls_key": os.fspath(tls_key) if tls_key is not None else None,
            "max_connections": check_int("max_connections", max_connections, 1, 1 << 20),
            "max_connections_per_client": check_int(
                "max_connections_per_client", max_connections_per_client, 1, 1 << 20
            ),
            "header_timeout": header_timeout,
            "idle_timeout": idle_timeout,
            "access_log": bool(access_log),
            "access_log_format": access_log or "combined",
            "workers": check_int("workers", workers, 1, 256),
            "metrics": split_hostport(metrics) if metrics is not None else None,
            "cors_origins": [check_cors_origin(o) for o in cors_origins],
            "cache_control": check_cache_control(cache_control),
            "list_directories": directory_listing,
            "remote_ttl": remote_ttl if self._remote else None,
        }
        self._url_key = _signed_url._check_key(url_key) if url_key is not None else None
        if self._url_key is not None:
            self._settings["verify_url"] = self._verify_url
        self._tls = tls_cert is not None
        if block_cache < 0:
            raise ValueError(f"block_cache must be a number of bytes >= 0, not {block_cache}")
        # One cache for every container served, bounded by bytes; each Reader (one per file
        # version, see Unlocker) reads under its own key, so a changed file is never served
        # from another version's plaintext.
        self._block_cache = _core.BlockCache(block_cache)
        self._allow_incomplete = allow_incomplete
        self._signers = sorted(_signing.parse_signers(signers)) if signers is not None else None
        if self._signers is not None and not self._signers:
            raise ValueError("signers is empty: give at least one qltx-ed25519: public key, or None")
        self._unlocker = Unlocker(self._open_container)
        from ._archive_server import MemberOpener

        pinned = frozenset(_signing.parse_signers(signers)) if signers is not None else None
        self._members = MemberOpener(self._open_archive, self._block_cache, pinned)
        self._settings["open_member"] = self._open_member
        self._settings["open_whole"] = self._open_whole
        super().__init__()

    def _open(self, path: str) -> _core.Reader:
        """Called by the HTTP loop for each container it does not hold open."""
        return self._open_remote(path, whole=False) if self._remote else self._unlocker.open(path)

    def _open_whole(self, path: str) -> _core.Reader:
        """Called by the HTTP loop instead of ``_open`` for a request that reads the whole
        container in order: on object storage the open's first GET streams the object on."""
        return self._open_remote(path, whole=True) if self._remote else self._unlocker.open(path)

    def _open_remote(self, path: str, *, whole: bool) -> _core.Reader:
        # An object key under the root (the HTTP loop checked its segments). The loop reuses
        # what this returns for remote_ttl seconds, then asks again.
        url = str(self.root).rstrip("/") + "/" + path
        try:
            return self._open_container(url, whole=whole)
        except QeltrixIOError as e:
            if "no such object" in str(e):
                raise FileNotFoundError(url) from None
            raise

    def _open_member(self, path: str, member: str) -> _core.Reader:
        """Called by the HTTP loop for a member of an archive: ``GET /backup.qltx/docs/a.pdf``."""
        return self._members(path, member)

    def _open_archive(self, path: str) -> Any:
        from .archive import open_archive

        return open_archive(path, passphrase=self._passphrase, key=self._key, signers=self._signers)

    def _open_container(self, path: str, whole: bool = False) -> _core.Reader:
        opened = open_reader(
            path,
            passphrase=self._passphrase,
            key=self._key,
            block_cache=self._block_cache,
            signers=self._signers,
            whole=whole,
        )
        return served_reader(opened, self._allow_incomplete)

    def _verify_url(self, url_path: str, query: str) -> str:
        """Called by the HTTP loop for a request whose query carries ``qx-sig``."""
        assert self._url_key is not None
        return _signed_url.check(self._url_key, url_path, query)

    def block_cache_stats(self) -> dict[str, int]:
        """The decrypted-block cache: ``entries``, ``bytes`` (of plaintext held), ``max_bytes``,
        ``hits``, ``misses`` and ``evictions`` since the server was made."""
        return self._block_cache.stats()

    @staticmethod
    def _log(level: str, line: str) -> None:
        if level == "access":
            access_logger.info("%s", line)
        else:
            log.log(_LEVELS.get(level, logging.INFO), "%s", line)

    def _make_core(self) -> _core.SeekServerCore:
        return _core.SeekServerCore(self.root, self._open, self._log, **self._settings)  # type: ignore[arg-type]

    def _started(self) -> None:
        log.info("serving %s on %s", self.root, self.url)
        if self.metrics_url is not None:
            log.info("metrics on %s/metrics", self.metrics_url)

    def stop(self, drain: float | None = None) -> None:
        """Stop accepting connections (new ones are refused). Responses in flight may finish
        for up to ``drain`` seconds (default: ``drain_timeout``); idle connections close at
        once, and whatever is still open after that is closed."""
        core = self._core
        if core is not None:
            wait = max(0.0, self.drain_timeout if drain is None else drain)
            in_flight = dict(core.stats()).get("responses_in_flight", 0)
            if wait > 0 and in_flight:
                log.info("stopping: new connections refused; %d response(s) in flight get %.3g s", in_flight, wait)
            cut = core.stop(wait)
            self._final_stats = _nest(core.stats())
            if cut:
                log.info("closed %d connection(s) still open after the %.3g s drain", cut, wait)
            self._core = None
        self._stopped.set()

    def stats(self) -> dict[str, int | dict[str, int]]:
        """Counters since start (after :meth:`stop`, the final ones).

        ``connections_active``, ``connections_total``, ``connections_refused``
        (``{"total_limit": n, "per_client_limit": n}``), ``http2_connections``,
        ``tls_handshake_failures``, ``requests`` (by status class, ``{"2xx": n, ...}``),
        ``responses_in_flight``, ``sent_bytes`` (body bytes), ``client_aborts`` (responses cut
        by their client), ``open_cache_hits``, ``open_cache_misses``, ``unlock_failures``.
        """
        if self._core is None:
            return dict(self._final_stats)
        return _nest(self._core.stats())

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT`` of the metrics endpoint, or None."""
        addr = self._core.metrics_address if self._core is not None else None
        if addr is None:
            return None
        host, port = addr
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """The bound port."""
        return self.address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._tls else 'http'}://{host}:{port}"


def _nest(pairs: list[tuple[str, int]]) -> dict[str, int | dict[str, int]]:
    """``[("requests:2xx", 3), ("sent_bytes", 9)]`` as ``{"requests": {"2xx": 3}, "sent_bytes": 9}``."""
    out: dict[str, int | dict[str, int]] = {}
    for name, value in pairs:
        family, sep, label = name.partition(":")
        if sep:
            group = out.setdefault(family, {})
            assert isinstance(group, dict)
            group[label] = value
        else:
            out[name] = value
    return out
