"""pack, unpack, seek_extract and open: the container API (docs/FORMAT.md).

The Rust core (``qeltrix_v6._core``) does framing, placement, the index and the threaded
pipelines; :mod:`qeltrix_v6._crypto` does every cryptographic operation. This module wires
them together: it chooses keys and recipients, builds and verifies the header, and makes
outputs atomic.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import os
import queue
import shutil
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Literal, cast, overload

from . import _core, _crypto, _pubkeys, _signing, _store
from ._atomic import AtomicOutput
from .errors import (
    AuthenticationError,
    LimitExceededError,
    MalformedError,
    QeltrixIOError,
    SignatureError,
    TruncatedError,
    WrongKeyError,
)

DEFAULT_BLOCK_SIZE: int = _core.DEFAULT_BLOCK_SIZE
HEADER_FLAG_PERMUTED: int = _core.HEADER_FLAG_PERMUTED
_MAX_RECIPIENTS: int = _core.MAX_RECIPIENTS  # docs/FORMAT.md section 9
_ARGON2ID_MAX_M_COST_KIB: int = _core.ARGON2ID_MAX_M_COST_KIB
_TRAILER_LEN: int = _core.TRAILER_LEN  # docs/FORMAT.md section 6.1

PathOrFile = str | os.PathLike[str] | IO[bytes]
Progress = Callable[[int, int | None], object]
IdentityArg = bytes | _crypto.Identity | Sequence[bytes | _crypto.Identity] | None
RecipientArg = str | bytes | _pubkeys.Recipient
_KIND_NAMES: dict[int, str] = _core.STANZA_NAMES


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack` wrote."""

    pt_len: int
    block_count: int
    container_len: int


_U64_MAX = (1 << 64) - 1  # offsets and lengths the core takes are u64: larger ones are past any end


def _check_workers(workers: int | None) -> None:
    if workers is not None and (not isinstance(workers, int) or not 1 <= workers <= _U64_MAX):
        raise ValueError(f"workers must be a positive integer or None (one per core), not {workers!r}")


def _check_cache_blocks(cache_blocks: int) -> int:
    if isinstance(cache_blocks, bool) or not isinstance(cache_blocks, int):
        raise TypeError(f"cache_blocks must be an int, not {type(cache_blocks).__name__}")
    if cache_blocks < 0:
        raise ValueError(f"cache_blocks must be non-negative, not {cache_blocks}")
    return min(cache_blocks, 4096)  # the core's own cap


def _check_credentials(
    passphrase: str | bytes | None,
    key: bytes | None,
    *,
    others: bool = False,
    what: str = "a passphrase or a 32-byte key",
) -> None:
    if passphrase is None and key is None and not others:
        raise ValueError(f"{what} is required")
    if key is not None and (not isinstance(key, bytes | bytearray) or len(key) != _crypto.KEY_LEN):
        raise ValueError(f"key must be exactly {_crypto.KEY_LEN} bytes")
    if passphrase is not None and len(passphrase) == 0:
        raise ValueError("the passphrase is empty")


def _check_file_arg(value: object, what: str, *, write: bool = False) -> None:
    """Refuse a ``src``/``dst`` that is neither a path, a binary file object nor a file
    descriptor with a ``TypeError`` or ``ValueError`` naming the argument, instead of an
    ``AttributeError`` or a failure deep in a pipeline. ``True`` is not file descriptor 1."""
    kinds = "a path, a binary file object or a file descriptor"
    if isinstance(value, bool):
        raise TypeError(f"{what} must be {kinds}, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: file descriptor {value} is negative")
        return
    if isinstance(value, str | os.PathLike):
        return
    methods = ("write",) if write else ("readinto", "read")
    if not any(callable(getattr(value, m, None)) for m in methods):
        raise TypeError(f"{what} must be {kinds}, not {type(value).__name__}")


def _open_input(path: str | os.PathLike[str]) -> IO[bytes]:
    if not isinstance(path, str | os.PathLike):
        # builtins.open would take an int as a descriptor to adopt and close.
        raise TypeError(f"expected a path, not {type(path).__name__}")
    try:
        return builtins.open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise QeltrixIOError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise QeltrixIOError(f"{os.fspath(path)}: is a directory") from None
    except OSError as e:
        raise QeltrixIOError(f"{os.fspath(path)}: {e.strerror}") from None


@contextlib.contextmanager
def public_reader(src: str | os.PathLike[str]) -> Iterator[_core.Reader]:
    """A header-only reader (no key) of a path or an ``s3://`` URL."""
    if _store.is_url(src):
        yield _core.Reader(_store.open_object(str(src)))
        return
    with _open_input(src) as f:
        yield _core.Reader(f.fileno())


def build_header(
    mk: bytes,
    container_id: bytes,
    cipher_id: int,
    block_size: int,
    perm_window: int,
    stanzas: list[tuple[int, bytes]],
    min_header_len: int = 0,
    *,
    signed: bool = False,
    archive: bool = False,
) -> tuple[bytes, _crypto.ContainerKeys]:
    """Encode and seal a header (FORMAT.md section 3); return it with the container keys.

    ``min_header_len`` keeps an existing header's length when recipients are rewritten in place;
    ``signed`` sets the SIGNED flag (a signature section will follow the footer, section 15);
    ``archive`` the ARCHIVE flag (the plaintext ends in a member table, section 16).
    """
    flags = (HEADER_FLAG_PERMUTED if perm_window else 0) | (_signing.HEADER_FLAG_SIGNED if signed else 0)
    flags |= _core.HEADER_FLAG_ARCHIVE if archive else 0
    unsealed = _core.encode_header_unsealed(
        flags, cipher_id, block_size, perm_window, container_id, stanzas, min_header_len
    )
    keys = _crypto.ContainerKeys(mk, container_id, cipher_id)
    checksummed = unsealed + _crypto.sha256(unsealed)
    return checksummed + keys.header_mac(checksummed), keys


def pack(
    src: PathOrFile,
    dst: PathOrFile,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    cipher: str = "aes-256-gcm",
    block_size: int = DEFAULT_BLOCK_SIZE,
    workers: int | None = None,
    permute: bool = True,
    progress: Progress | None = None,
    kdf: Literal["argon2id", "pbkdf2"] = "argon2id",
    kdf_params: dict[str, int] | None = None,
    overwrite: bool = True,
    recipients: Sequence[RecipientArg] | None = None,
    kms: Any = None,
    sign_with: _signing.SignWith | None = None,
    _archive: bool = False,
    part_size: int | None = None,
) -> PackResult:
    """Encrypt ``src`` into a V6 container at ``dst``.

    ``src`` and ``dst`` are paths or binary file objects. Give a ``passphrase`` (Argon2id by
    default, ``kdf="pbkdf2"`` on request), a 32-byte ``key``, public ``recipients``
    (``qltx-x25519:...`` keys, PEM RSA public keys, ``kms:KEY_ID`` with ``kms=KmsConfig(...)``),
    or several of them: each is one recipient. No secret is needed to pack for public
    recipients: the packer cannot read what it wrote. ``sign_with`` (an Ed25519 private key:
    PEM bytes, a 32-byte seed, or the path of a ``qeltrix keygen --ed25519`` file) signs the
    container, so readers that pin its public key (``signers=[...]``) know who wrote it. Blocks
    are sealed on ``workers`` threads (default: one per core) with bounded memory. A path
    ``dst`` is written atomically: it appears only when complete. An ``s3://BUCKET/KEY`` ``dst``
    is a multipart upload of ``part_size``-byte parts (default 8 MiB) sent while encrypting,
    published only when complete and aborted on any failure; an existing object is replaced
    only with ``overwrite=True``.

    >>> import io, qeltrix_v6
    >>> out = io.BytesIO()
    >>> qeltrix_v6.pack(io.BytesIO(b"hello world"), out, key=bytes(32)).pt_len
    11
    >>> qeltrix_v6.seek_extract(io.BytesIO(out.getvalue()), 6, 5, key=bytes(32))
    b'world'
    """
    public = _pubkeys.parse_recipients(recipients)
    _check_credentials(passphrase, key, others=bool(public), what="a passphrase, a 32-byte key or a recipient")
    _check_workers(workers)
    if cipher not in _crypto.CIPHERS:
        raise ValueError(f"unknown cipher {cipher!r}: use one of {', '.join(_crypto.CIPHERS)}")
    if not _core.MIN_BLOCK_SIZE <= block_size <= _core.MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in {_core.MIN_BLOCK_SIZE}..{_core.MAX_BLOCK_SIZE}")
    signer = _signing.load_signer(sign_with) if sign_with is not None else None
    mk = _crypto.random_bytes(_crypto.MK_LEN)
    container_id = _crypto.random_bytes(_core.CONTAINER_ID_LEN)
    stanzas = []
    if key is not None:
        stanzas.append(_crypto.key_stanza(bytes(key), mk, container_id))
    if passphrase is not None:
        stanzas.append(_crypto.passphrase_stanza(passphrase, mk, container_id, kdf, kdf_params))
    stanzas += [_pubkeys.recipient_stanza(r, mk, container_id, kms) for r in public]
    if len(stanzas) > _MAX_RECIPIENTS:
        raise ValueError(f"a container holds at most {_MAX_RECIPIENTS} recipients, not {len(stanzas)}")
    perm_window = _core.default_perm_window(block_size) if permute else 0
    header, keys = build_header(
        mk,
        container_id,
        _crypto.CIPHERS[cipher],
        block_size,
        perm_window,
        stanzas,
        signed=signer is not None,
        archive=_archive,  # qeltrix_v6.archive.pack_archive: src is an archive's plaintext
    )

    _check_file_arg(src, "src")
    _check_file_arg(dst, "dst", write=True)
    with contextlib.ExitStack() as stack:
        total: int | None = None
        if isinstance(src, str | os.PathLike):
            f = stack.enter_context(_open_input(src))
            total = os.fstat(f.fileno()).st_size
            src_arg: Any = f.fileno()
        else:
            src_arg = src
        upload = None
        dst_arg: Any
        if _store.is_url(dst):
            # A multipart upload: nothing is visible under the key until complete(); any
            # failure (or Ctrl-C) aborts it, leaving no parts behind.
            atomic, dst_arg = None, _store.create_upload(str(dst), force=overwrite, part_size=part_size)
            upload = dst_arg
            stack.callback(upload.abort)  # a no-op once complete
        elif isinstance(dst, str | os.PathLike):
            atomic = AtomicOutput(dst, overwrite=overwrite)
            out = stack.enter_context(atomic)
            dst_arg = out.fileno()
        else:
            atomic, dst_arg = None, dst
        pt_len, block_count, container_len = _core.pack_stream(
            src_arg, dst_arg, keys, header, block_size, perm_window, keys.k_perm, workers, progress, total, signer
        )
        if atomic is not None:
            atomic.commit()
        if upload is not None:
            upload.complete()
    return PackResult(pt_len, block_count, container_len)


class IncompleteContainerWarning(UserWarning):
    """An incomplete container (a stream cut before its FINAL frame) is read with
    ``allow_incomplete=True``: what is there authenticated, but the end is missing."""


def incomplete_message(name: str | None, block_count: int, pt_len: int) -> str:
    what = f"{name} is" if name else "the container is"
    return (
        f"{what} INCOMPLETE: a stream cut before its FINAL frame; its {block_count:,} blocks "
        f"({pt_len:,} bytes) authenticate, but whatever followed them is missing"
    )


class _Opened:
    """A reader whose header is verified and whose index is loaded."""

    def __init__(
        self,
        reader: _core.Reader,
        keys: _crypto.ContainerKeys,
        owned: list[IO[bytes]],
        *,
        allow_incomplete: bool = False,
        name: str | None = None,
    ) -> None:
        self.reader = reader
        self.keys = keys
        self._owned = owned
        self.allow_incomplete = allow_incomplete
        self.name = name
        self._warned = False

    def check_end(self, offset: int, length: int) -> None:
        """Refuse a read of ``[offset, offset + length)`` that runs past the end of an incomplete
        container (FORMAT.md section 8): a cut is never reported as a clean end (EOF), unless
        the caller opted in, in which case it is warned once. Bytes that are there read fine."""
        if length <= 0 or not self.reader.incomplete or offset + length <= self.reader.pt_total_len:
            return
        n = self.reader.block_count
        if n and not self._warned:
            # The last block must not carry FINAL (FORMAT.md section 5): a hostile index that
            # flags INCOMPLETE over a complete stream is corrupt, not truncated.
            self.reader.read_block(n - 1)
        message = incomplete_message(self.name, n, self.reader.pt_total_len)
        if not self.allow_incomplete:
            raise TruncatedError(message + " (pass allow_incomplete=True / --allow-incomplete to read it anyway)")
        if not self._warned:
            self._warned = True
            warnings.warn(message, IncompleteContainerWarning, stacklevel=3)

    def close(self) -> None:
        for f in self._owned:
            f.close()
        self._owned = []


def open_reader(
    src: PathOrFile,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: IdentityArg = None,
    kms: Any = None,
    cache_blocks: int = 8,
    allow_incomplete: bool = False,
    max_kdf_memory: int | None = None,
    kms_key_ids: Sequence[str] | None = None,
    signers: _signing.SignersArg = None,
    block_cache: _core.BlockCache | None = None,
    whole: bool = False,
) -> _Opened:
    """Open a container for reading: checksum, unwrap the MK, verify the header MAC, load the index.

    ``identity`` is an X25519 private key (32 raw bytes), a PEM RSA private key, or a list of
    them; ``kms`` (a :class:`~qeltrix_v6.KmsConfig`) allows unwrapping KMS stanzas, and only
    with the keys in ``kms_key_ids`` (strict mode) unless the config says ``discovery=True``.
    ``cache_blocks`` decrypted blocks are kept for reuse by later reads (in ``block_cache``
    instead when given: a cache shared by several readers, bounded by bytes). A read that reaches
    the end of an incomplete container raises :class:`TruncatedError` unless
    ``allow_incomplete``; ``max_kdf_memory`` caps the passphrase KDF's memory (bytes).
    ``signers`` (pinned ``qltx-ed25519:`` public keys) requires the container to be signed by
    one of them: the signature is checked here, and each frame against its signed digest
    before it is decrypted (:class:`~qeltrix_v6.SignatureError` otherwise). ``whole``: the
    caller reads the whole container next, in order (on object storage the open's first GET
    then streams the object on).
    """
    kms = _kms_with_keys(kms, kms_key_ids)
    identities = _pubkeys.load_identities(identity)
    _check_reader_credentials(passphrase, key, identities, kms)
    pinned = _signing.parse_signers(signers)
    if signers is not None and not pinned:
        raise ValueError("signers is empty: give at least one qltx-ed25519: public key, or None")
    _check_file_arg(src, "src")
    owned: list[IO[bytes]] = []
    if _store.is_url(src):
        arg: Any = _store.open_object(str(src), whole=whole)  # GETs pinned to the ETag seen here
    elif isinstance(src, _core.StoreObject):
        arg = src  # opened by the caller, who needs its ETag (passwd on s3://)
    elif isinstance(src, str | os.PathLike):
        f = _open_input(src)
        owned.append(f)
        arg = f.fileno()
    elif isinstance(src, int):
        arg = src  # a file descriptor: Rust reads it in place
    else:
        if not (hasattr(src, "seekable") and src.seekable()):
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the _Opened
            shutil.copyfileobj(src, spool, 1 << 20)
            owned.append(spool)
            arg = spool.fileno()
        else:
            arg = src
    try:
        reader = _core.Reader(arg, _check_cache_blocks(cache_blocks), block_cache)
        if pinned:
            _signing.require_signed_flag(int(reader.header_flags))  # S1, before any KDF
        keys = unlock_header(
            reader.header, passphrase=passphrase, key=key, identity=identities, kms=kms, max_kdf_memory=max_kdf_memory
        )
        reader.load_index(keys)
        if pinned:
            _signing.enforce(reader, pinned)
    except BaseException:
        for f in owned:
            f.close()
        raise
    name = os.fspath(src) if isinstance(src, str | os.PathLike) else getattr(src, "name", None)
    return _Opened(reader, keys, owned, allow_incomplete=allow_incomplete, name=name if isinstance(name, str) else None)


def _kms_with_keys(kms: Any, kms_key_ids: Sequence[str] | None) -> Any:
    """``kms`` with ``kms_key_ids`` added to the keys a reader may call (strict mode)."""
    if not kms_key_ids:
        return kms
    if isinstance(kms_key_ids, str):
        kms_key_ids = [kms_key_ids]
    from . import _kms

    cfg = _kms.config_or_default(kms)
    return dataclasses.replace(cfg, key_ids=(*cfg.key_ids, *kms_key_ids))


def _check_reader_credentials(
    passphrase: str | bytes | None, key: bytes | None, identities: list[_crypto.Identity], kms: Any
) -> None:
    _check_credentials(
        passphrase,
        key,
        others=bool(identities) or kms is not None,
        what="a passphrase, a 32-byte key, an identity or a KMS configuration",
    )


MAX_KDF_MEMORY = _ARGON2ID_MAX_M_COST_KIB * 1024
"""The default ceiling on the memory a passphrase KDF may use when opening (1 GiB)."""


def _check_kdf_memory(stanzas: Sequence[tuple[int, bytes]], max_kdf_memory: int | None) -> None:
    ceiling = MAX_KDF_MEMORY if max_kdf_memory is None else max_kdf_memory
    for kind, body in stanzas:
        if kind == _crypto.KIND_ARGON2ID:
            t_cost, m_cost_kib, lanes = _crypto.argon2id_params(body)
            if m_cost_kib * 1024 > ceiling:
                raise LimitExceededError(
                    f"the passphrase KDF of this container asks for {m_cost_kib // 1024} MiB of memory "
                    f"(argon2id t={t_cost}, lanes={lanes}), over the ceiling of {ceiling // (1 << 20)} MiB; "
                    "raise --max-kdf-memory (max_kdf_memory=) only if you trust where the file came from"
                )


def unlock_header(
    h: _core.Header,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: IdentityArg = None,
    kms: Any = None,
    max_kdf_memory: int | None = None,
) -> _crypto.ContainerKeys:
    """Check the header checksum, unwrap the MK from a stanza, verify the header MAC
    (FORMAT.md section 8 steps 2-4); return the container's keys.

    ``max_kdf_memory`` (bytes; default :data:`MAX_KDF_MEMORY`, the format's limit) is the most
    memory the passphrase KDF may ask for: a header asking more is refused before it runs.

    Local credentials are tried first (in header order), KMS stanzas last, so a container that
    opens with a key file never waits for the network.
    """
    if _crypto.sha256(h.header_checksummed) != h.header_sha256:
        raise AuthenticationError("container header is corrupt (checksum mismatch)")
    if passphrase is not None:
        _check_kdf_memory(h.stanzas, max_kdf_memory)
    identities = _pubkeys.load_identities(identity)
    mk = None
    kinds = {kind for kind, _ in h.stanzas}
    cid = bytes(h.container_id)
    kms_refusal: WrongKeyError | None = None
    for kind, body in h.stanzas:
        if kind in (_crypto.KIND_X25519, _crypto.KIND_RSA_OAEP):
            for ident in identities:
                if ident.matches(kind, body):
                    mk = ident.unwrap(kind, body, cid)
                    if mk is None:
                        raise AuthenticationError(
                            f"the {_KIND_NAMES[kind]} stanza sealed to this identity does not open "
                            "(corrupt or tampered header)"
                        )
                    break
        elif kind != _crypto.KIND_KMS:
            mk = _crypto.unwrap_stanza(kind, body, cid, key=key, passphrase=passphrase)
        if mk is not None:
            break
    kms_skipped: list[str] = []
    if mk is None and kms is not None:
        from . import _kms

        cfg = _kms.config_or_default(kms)
        for kind, body in h.stanzas:
            if kind != _crypto.KIND_KMS:
                continue
            key_id, blob = _pubkeys.kms_stanza_parts(body)
            if not cfg.allows(key_id):
                # Strict mode: a stanza is unauthenticated here; never call a key it names
                # unless the caller listed that key (FORMAT.md section 3.1).
                kms_skipped.append(key_id)
                continue
            try:
                mk = _kms.kms_unwrap(cfg, key_id, blob, cid)
            except WrongKeyError as e:
                kms_refusal = e
                continue
            if mk is not None:
                break
    if mk is None:
        if kms_refusal is not None:
            raise kms_refusal
        if kms_skipped:
            shown = ", ".join(kms_skipped[:3]) + (" ..." if len(kms_skipped) > 3 else "")
            raise WrongKeyError(
                f"this container is wrapped by KMS key(s) not in the allowed list ({shown}): "
                "pass the key ARN you expect (--kms-key-id / kms_key_ids=), or opt in to calling "
                "whatever key the file names (--kms-discovery / KmsConfig(discovery=True))"
            )
        raise WrongKeyError(_wrong_key_message(kinds, passphrase, key, identities, kms, h.stanzas))
    keys = _crypto.ContainerKeys(mk, cid, h.cipher_id)
    keys.verify_header_mac(h.header_maced, h.header_mac)
    return keys


def recover(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    overwrite: bool = False,
    identity: IdentityArg = None,
    kms: Any = None,
    max_kdf_memory: int | None = None,
    kms_key_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rebuild the index of a stored stream whose writer died before appending it
    (FORMAT.md section 12). Every frame that authenticates, up to the first that does not,
    is kept; without a ``FINAL`` frame the result is marked incomplete (and reading it to its
    end then raises :class:`TruncatedError` unless the reader opts in).

    Returns ``{"blocks", "pt_len", "complete", "stopped", "kept_len", "dropped_len"}``:
    ``kept_len`` bytes of ``src`` (header and authenticated frames) were kept, the
    ``dropped_len`` bytes after them were not.
    """
    for what, path in (("src", src), ("dst", dst)):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"{what} must be a path, not {type(path).__name__}")
    kms = _kms_with_keys(kms, kms_key_ids)
    identities = _pubkeys.load_identities(identity)
    _check_reader_credentials(passphrase, key, identities, kms)

    def unlock(reader: Any) -> _crypto.ContainerKeys:
        if int(reader.header_flags) & _signing.HEADER_FLAG_SIGNED:
            # A signing sink died before it signed: an index alone would leave SIGNED set with no
            # signature, which FORMAT.md section 15.3 forbids.
            raise SignatureError(
                "this stream was stored by a signing sink that stopped before signing it; "
                "recover cannot vouch for it in the sink's name"
            )
        return unlock_header(
            reader.header,
            passphrase=passphrase,
            key=key,
            identity=identities,
            kms=kms,
            max_kdf_memory=max_kdf_memory,
        )

    if _store.is_url(src):
        from . import _s3recover  # boto3 only when needed

        def output(path: str) -> Any:
            if _store.is_url(path):
                return _store.create_upload(path, force=overwrite)
            return AtomicOutput(path, overwrite=overwrite)

        obj = _s3recover.open_for_recovery(str(src))
        (blocks, pt_len, complete, stopped, kept_len), src_len = _s3recover.recover(obj, os.fspath(dst), unlock, output)
    elif _store.is_url(dst):
        raise QeltrixIOError(f"{dst}: recover writes to s3:// only from an s3:// source; recover to a file and pack it")
    else:
        with _open_input(src) as f:
            src_len = os.fstat(f.fileno()).st_size
            keys = unlock(_core.Reader(f.fileno()))
        atomic = AtomicOutput(dst, overwrite=overwrite)
        with atomic:
            blocks, pt_len, complete, stopped = _core.recover_stream_file(os.fspath(src), atomic.temp_path, keys)
            with builtins.open(atomic.temp_path, "rb") as out:
                out.seek(-_TRAILER_LEN, os.SEEK_END)
                (kept_len,) = struct.unpack_from("<Q", out.read(_TRAILER_LEN))  # footer_offset
            atomic.commit()
    return {
        "blocks": blocks,
        "pt_len": pt_len,
        "complete": complete,
        "stopped": stopped,
        "kept_len": kept_len,
        "dropped_len": max(0, src_len - kept_len),
    }


def _wrong_key_message(
    kinds: set[int],
    passphrase: object,
    key: object,
    identities: Sequence[_crypto.Identity] = (),
    kms: object = None,
    stanzas: Sequence[tuple[int, bytes]] = (),
) -> str:
    has_pw = bool(kinds & {_crypto.KIND_ARGON2ID, _crypto.KIND_PBKDF2})
    has_key = _crypto.KIND_KEY in kinds
    id_kinds = sorted(kinds & {_crypto.KIND_X25519, _crypto.KIND_RSA_OAEP})
    has_kms = _crypto.KIND_KMS in kinds
    if identities:
        mine = ", ".join(_pubkeys.recipient_text(i.kind, i.public) for i in identities)
        if not id_kinds:
            return f"wrong identity: this container has no public-key recipients (the identity is {mine})"
        count = sum(1 for k, _ in stanzas if k in id_kinds)
        return (
            f"wrong identity: none of the {count} public-key recipients of this container is {mine}; "
            "'qeltrix recipients list' shows them"
        )
    if passphrase is None and key is None and kms is not None and not has_kms:
        return "this container has no KMS recipient"
    if not (has_pw or has_key) and id_kinds:
        names = " and ".join(_KIND_NAMES[k] for k in id_kinds)
        return f"this container is sealed to public keys ({names}): open it with the private key (identity)"
    if not (has_pw or has_key) and has_kms:
        return "this container is wrapped by a KMS key: open it with KMS access (kms=KmsConfig(...) / --kms)"
    if key is not None and passphrase is None and not has_key and has_pw:
        return "this container is protected by a passphrase, not a key file"
    if passphrase is not None and key is None and not has_pw and has_key:
        return "this container is protected by a key file, not a passphrase"
    what = " or ".join(w for w, given in (("passphrase", passphrase), ("key", key)) if given is not None) or "key"
    return f"wrong {what}: no recipient of this container opens with it"


def unpack(
    src: PathOrFile,
    dst: PathOrFile,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    overwrite: bool = True,
    identity: IdentityArg = None,
    kms: Any = None,
    allow_incomplete: bool = False,
    max_kdf_memory: int | None = None,
    kms_key_ids: Sequence[str] | None = None,
    signers: _signing.SignersArg = None,
) -> int:
    """Decrypt the container ``src`` into ``dst``; return the plaintext length.

    Every block is authenticated before any of its bytes is written. A path ``dst`` is written
    atomically; if anything fails (wrong key, tampering, Ctrl-C) no output file is left. An
    incomplete container (a cut stream) raises :class:`TruncatedError` before anything is
    written, unless ``allow_incomplete=True`` (then it warns and writes what authenticated).
    ``signers`` requires a signature by one of these ``qltx-ed25519:`` keys (see :func:`open`).
    """
    _check_workers(workers)
    _check_file_arg(dst, "dst", write=True)
    opened = open_reader(
        src,
        passphrase=passphrase,
        key=key,
        identity=identity,
        kms=kms,
        allow_incomplete=allow_incomplete,
        max_kdf_memory=max_kdf_memory,
        kms_key_ids=kms_key_ids,
        signers=signers,
        whole=True,
    )
    try:
        opened.check_end(0, opened.reader.pt_total_len + 1)
        if isinstance(dst, str | os.PathLike):
            atomic = AtomicOutput(dst, overwrite=overwrite)
            with atomic as out:
                n: int = opened.reader.unpack_to(out.fileno(), workers, progress)
                atomic.commit()
            return n
        return int(opened.reader.unpack_to(dst, workers, progress))
    finally:
        opened.close()


def seek_extract(
    src: PathOrFile,
    offset: int,
    length: int,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: IdentityArg = None,
    kms: Any = None,
    allow_incomplete: bool = False,
    max_kdf_memory: int | None = None,
    kms_key_ids: Sequence[str] | None = None,
    signers: _signing.SignersArg = None,
) -> bytes:
    """Plaintext bytes ``[offset, offset + length)`` of a container, decrypting only the blocks
    that cover them. Reads past the end return what exists, like a file; in an incomplete
    container such a read raises :class:`TruncatedError` unless ``allow_incomplete=True``.
    With ``signers``, the signature and the frames read are checked against it (no other
    frame is read).
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be non-negative")
    opened = open_reader(
        src,
        passphrase=passphrase,
        key=key,
        identity=identity,
        kms=kms,
        allow_incomplete=allow_incomplete,
        max_kdf_memory=max_kdf_memory,
        kms_key_ids=kms_key_ids,
        signers=signers,
    )
    try:
        opened.check_end(offset, length)
        return bytes(opened.reader.read_at(min(offset, _U64_MAX), min(length, _U64_MAX)))
    finally:
        opened.close()


class ContainerFile(io.RawIOBase):
    """A read-only, seekable binary file over a container's plaintext.

    Returned by ``qeltrix_v6.open(path, "rb", ...)``. Works with :class:`io.BufferedReader`,
    :func:`shutil.copyfileobj` and :class:`zipfile.ZipFile`.
    """

    def __init__(self, opened: _Opened, name: str | None = None) -> None:
        super().__init__()
        self._opened = opened
        self._pos = 0
        self.name = name
        self.size: int = opened.reader.pt_total_len

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        view = memoryview(b).cast("B")
        self._opened.check_end(self._pos, len(view))
        data = self._opened.reader.read_at(min(self._pos, _U64_MAX), len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._checkClosed()
        self._opened.check_end(self._pos, max(0, self.size - self._pos) + 1)  # to EOF
        data: bytes = self._opened.reader.read_at(min(self._pos, _U64_MAX), max(0, self.size - self._pos))
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._opened.close()
        super().close()


_EOF = object()
_ABORT = object()


class _QueueSource:
    """The read side of :class:`ContainerWriter`: ``readinto`` fed by a bounded queue."""

    def __init__(self, q: queue.Queue[object]) -> None:
        self._q = q
        self._chunk = b""
        self._eof = False

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while not self._chunk:
            if self._eof:
                return 0
            item = self._q.get()
            if item is _EOF:
                self._eof = True
                return 0
            if item is _ABORT:
                raise QeltrixIOError("the writer was closed after an error; output discarded")
            self._chunk = item  # type: ignore[assignment]
        n = min(len(view), len(self._chunk))
        view[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n


class ContainerWriter(io.RawIOBase):
    """A streaming writer: bytes written to it are packed as they arrive, with bounded memory.

    Returned by ``qeltrix_v6.open(dst, "wb", ...)``. The container is complete when the writer
    is closed; leaving a ``with`` block by an exception discards the output (a path ``dst`` is
    then never created).
    """

    _QUEUE_CHUNKS = 16

    def __init__(self, dst: PathOrFile, pack_kwargs: dict[str, Any], name: str | None = None) -> None:
        super().__init__()
        self.name = name
        self._q: queue.Queue[object] = queue.Queue(maxsize=self._QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._result: PackResult | None = None
        self._written = 0
        self._thread = threading.Thread(target=self._run, args=(dst, pack_kwargs), daemon=True)
        self._thread.start()

    def _run(self, dst: PathOrFile, pack_kwargs: dict[str, Any]) -> None:
        try:
            self._result = pack(cast(IO[bytes], _QueueSource(self._q)), dst, **pack_kwargs)
        except BaseException as e:
            self._error = e
            # Unblock a producer waiting on a full queue.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._q.get_nowait()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._checkClosed()
        data = bytes(b)
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._q.put(data, timeout=0.1)
                break
            except queue.Full:
                continue
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    @property
    def result(self) -> PackResult | None:
        """What was written, once closed."""
        return self._result

    def _finish(self, item: object) -> None:
        while self._thread.is_alive():
            try:
                self._q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    def close(self) -> None:
        if self.closed:
            return
        self._finish(_EOF)
        super().close()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop and discard the output."""
        if self.closed:
            return
        self._finish(_ABORT)
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


_READ_OPTIONS = ("kms", "allow_incomplete", "max_kdf_memory", "kms_key_ids", "cache_blocks", "signers")


@overload
def open(path_or_file: PathOrFile, mode: Literal["rb"] = "rb", **kwargs: Any) -> ContainerFile: ...
@overload
def open(path_or_file: PathOrFile, mode: Literal["wb"], **kwargs: Any) -> ContainerWriter: ...
def open(
    path_or_file: PathOrFile,
    mode: str = "rb",
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: IdentityArg = None,
    **kwargs: Any,
) -> ContainerFile | ContainerWriter:
    """Open a container as a file object.

    ``"rb"``: a seekable, read-only view of the plaintext; ``signers=[...]`` requires a
    signature by one of those ``qltx-ed25519:`` keys, checked at open and on every frame read.
    ``"wb"``: a streaming writer that packs what is written (``kwargs`` are :func:`pack`'s
    options, ``sign_with=`` included), for input of unknown length.

    >>> import io, qeltrix_v6
    >>> buf = io.BytesIO()
    >>> with qeltrix_v6.open(buf, "wb", key=bytes(32), block_size=16) as w:
    ...     _ = w.write(b"0123456789" * 10)
    >>> with qeltrix_v6.open(io.BytesIO(buf.getvalue()), key=bytes(32)) as f:
    ...     _ = f.seek(-5, 2)
    ...     f.read()
    b'56789'
    """
    name = (
        os.fspath(path_or_file) if isinstance(path_or_file, str | os.PathLike) else getattr(path_or_file, "name", None)
    )
    if mode == "rb":
        read_options = {k: kwargs.pop(k) for k in _READ_OPTIONS if k in kwargs}
        if kwargs:
            raise TypeError(f"unexpected options for mode 'rb': {', '.join(kwargs)}")
        opened = open_reader(path_or_file, passphrase=passphrase, key=key, identity=identity, **read_options)
        return ContainerFile(opened, name=name)
    if mode == "wb":
        if identity is not None:
            raise TypeError("an identity opens containers; to write for one, pass recipients=[its public key]")
        _check_credentials(
            passphrase, key, others=bool(kwargs.get("recipients")), what="a passphrase, a key or a recipient"
        )
        return ContainerWriter(path_or_file, {"passphrase": passphrase, "key": key, **kwargs}, name=name)
    raise ValueError(f"mode must be 'rb' or 'wb', not {mode!r}")


def iter_blocks(opened: _Opened) -> Iterator[tuple[int, int, int]]:
    """``(block_index, pt_offset, pt_len)`` of every block, in plaintext order."""
    for i in range(opened.reader.block_count):
        pt_offset, pt_len, _ = opened.reader.block_info(i)
        yield i, pt_offset, pt_len


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "ContainerFile",
    "ContainerWriter",
    "MalformedError",
    "PackResult",
    "open",
    "pack",
    "seek_extract",
    "unpack",
]
