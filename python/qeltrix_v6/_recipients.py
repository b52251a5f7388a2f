"""Recipients of a container: describe them, change them by rewriting the header only, rotate the MK.

``qeltrix passwd`` changes a container's passphrase, or adds and removes key-file recipients,
and ``qeltrix recipients add|remove`` adds and removes public-key and KMS recipients,
without touching a single block: the master key (MK) stays the same, only the stanzas that
wrap it change (docs/FORMAT.md section 3.1). The new header is sealed to exactly the length
of the old one (its padding absorbs the difference) and written in place at offset 0.

A header rewrite does not rotate the MK. Anyone who kept a copy of the container (or of its
old header, or the MK itself) can still open that copy with a removed credential. To revoke a
credential for good, :func:`rotate` re-encrypts every block under a fresh MK (``qeltrix
rotate``), streaming, and replaces the file atomically.

Signed containers (docs/FORMAT.md section 15.3): a header rewrite changes what the signature
covers, and a rotation changes every frame. Both refuse a signed container unless given a
signing key (``sign_with``), and then sign the result again, after checking that the old
signature verifies; nothing is ever left with a signature that does not verify.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _core, _crypto, _pubkeys, _s3rewrite, _signing, _store
from ._atomic import AtomicOutput
from ._container import HEADER_FLAG_PERMUTED, IdentityArg, Progress, build_header, open_reader
from ._pubkeys import Recipient
from .errors import AuthenticationError, MalformedError, QeltrixError, QeltrixIOError, SignatureError

# The recipient kinds: every named stanza kind but a gateway stream's handshake stanza.
KIND_NAMES: dict[int, str] = {k: n for k, n in _core.STANZA_NAMES.items() if k != _core.KIND_HANDSHAKE}
PASSPHRASE_KINDS = _crypto.PASSPHRASE_KINDS

MAX_RECIPIENTS: int = _core.MAX_RECIPIENTS  # docs/FORMAT.md section 9
_PBKDF2_PARAMS = struct.Struct("<16sI")


class RecipientError(QeltrixError):
    """A requested recipient change is not possible (nothing was written)."""


def describe_stanza(kind: int, body: bytes) -> dict[str, Any]:
    """The public facts of one recipient stanza: its kind and, for passphrases, KDF parameters."""
    name = KIND_NAMES.get(kind)
    if name is None:
        return {"kind": "unknown", "kind_id": kind, "body_len": len(body)}
    out: dict[str, Any] = {"kind": name, "kind_id": kind}
    if kind == _crypto.KIND_ARGON2ID:
        t_cost, m_cost_kib, lanes = _crypto.argon2id_params(body)
        out.update(t_cost=t_cost, m_cost_kib=m_cost_kib, lanes=lanes)
    elif kind == _crypto.KIND_PBKDF2:
        _, iterations = _PBKDF2_PARAMS.unpack_from(body)
        out.update(iterations=iterations)
    elif kind in _pubkeys.PUBLIC_KINDS:
        try:
            r = _pubkeys.stanza_recipient(kind, body)
        except MalformedError:
            return {"kind": name, "kind_id": kind, "recipient": None, "damaged": True}
        assert r is not None
        out["recipient"] = r.text()
        if kind == _crypto.KIND_RSA_OAEP:
            out["bits"] = 8 * len(_crypto.rsa_stanza_parts(body)[1])
    return out


def recipient_summary(desc: dict[str, Any]) -> str:
    """One human phrase for a :func:`describe_stanza` result."""
    kind = desc["kind"]
    if kind == "key":
        return "key file"
    if kind == "argon2id":
        mem = desc["m_cost_kib"]
        mem_s = f"{mem // 1024} MiB" if mem % 1024 == 0 else f"{mem} KiB"
        return f"passphrase (argon2id, t={desc['t_cost']}, m={mem_s}, lanes={desc['lanes']})"
    if kind == "pbkdf2":
        return f"passphrase (pbkdf2-sha256, {desc['iterations']:,} iterations)"
    if kind == "x25519":
        return f"X25519 public key {desc['recipient']}"
    if kind == "rsa-oaep":
        return f"RSA-{desc.get('bits', '?')} public key {desc['recipient']}"
    if kind == "kms":
        return f"KMS key {desc['recipient']}"
    return f"unknown recipient kind {desc['kind_id']} ({desc['body_len']} bytes; kept as is)"


@dataclass
class RecipientChange:
    """What ``passwd`` changes. Every field left at its default changes nothing."""

    new_passphrase: str | bytes | None = None
    kdf: str = "argon2id"
    kdf_params: dict[str, int] | None = None
    remove_passphrase: bool = False
    add_keys: list[bytes] = field(default_factory=list)
    remove_keys: list[bytes] = field(default_factory=list)
    add_recipients: list[Recipient] = field(default_factory=list)
    #: Recipients to remove, as ``recipients list`` prints them (or their public keys).
    remove_recipients: list[str | Recipient] = field(default_factory=list)
    #: A :class:`~qeltrix_v6.KmsConfig` for adding KMS recipients.
    kms: Any = None

    def is_empty(self) -> bool:
        return self.new_passphrase is None and not (
            self.remove_passphrase or self.add_keys or self.remove_keys or self.add_recipients or self.remove_recipients
        )


def _recipient_matches(target: str | Recipient, r: Recipient) -> bool:
    if isinstance(target, Recipient):
        return target == r
    return target.strip() == r.text()


def _stanza_public(kind: int, body: bytes) -> Recipient | None:
    try:
        return _pubkeys.stanza_recipient(kind, body)
    except MalformedError:
        return None


def _opens_with_key(kind: int, body: bytes, container_id: bytes, key: bytes, mk: bytes) -> bool:
    if kind != _crypto.KIND_KEY:
        return False
    got = _crypto.unwrap_stanza(kind, body, container_id, key=key, passphrase=None)
    return got is not None and got == mk


def plan_stanzas(
    stanzas: list[tuple[int, bytes]], mk: bytes, container_id: bytes, change: RecipientChange
) -> list[tuple[int, bytes]]:
    """The new stanza list for ``change``; unknown and untouched stanzas are kept byte for byte.

    A new passphrase replaces every passphrase stanza (qeltrix writes at most one), at the
    position of the first one. Raises :class:`RecipientError` when the change is impossible.
    """
    if change.new_passphrase is not None and change.remove_passphrase:
        raise RecipientError("cannot both set a new passphrase and remove the passphrase")
    new_pw_stanza = None
    if change.new_passphrase is not None:
        new_pw_stanza = _crypto.passphrase_stanza(
            change.new_passphrase, mk, container_id, change.kdf, change.kdf_params
        )
    had_passphrase = any(kind in PASSPHRASE_KINDS for kind, _ in stanzas)
    if change.remove_passphrase and not had_passphrase:
        raise RecipientError("this container has no passphrase to remove")

    out: list[tuple[int, bytes]] = []
    removed = [False] * len(change.remove_keys)
    removed_pub = [False] * len(change.remove_recipients)
    for kind, body in stanzas:
        if kind in PASSPHRASE_KINDS and (new_pw_stanza is not None or change.remove_passphrase):
            if new_pw_stanza is not None:
                out.append(new_pw_stanza)
                new_pw_stanza = None
            continue
        hit = False
        for j, k in enumerate(change.remove_keys):
            if _opens_with_key(kind, body, container_id, k, mk):
                removed[j] = hit = True
        pub = _stanza_public(kind, body)
        if pub is not None:
            for j, target in enumerate(change.remove_recipients):
                if _recipient_matches(target, pub):
                    removed_pub[j] = hit = True
        if hit:
            continue
        out.append((kind, bytes(body)))
    if new_pw_stanza is not None:
        out.append(new_pw_stanza)
    for j, ok in enumerate(removed):
        if not ok:
            which = f" #{j + 1}" if len(change.remove_keys) > 1 else ""
            raise RecipientError(f"the key file to remove{which} is not a recipient of this container")
    for j, ok in enumerate(removed_pub):
        if not ok:
            t = change.remove_recipients[j]
            text = t.text() if isinstance(t, Recipient) else t
            raise RecipientError(f"{text} is not a recipient of this container ('qeltrix recipients list' shows them)")
    for k in change.add_keys:
        if any(_opens_with_key(kind, body, container_id, k, mk) for kind, body in out):
            raise RecipientError("the key file to add is already a recipient of this container")
        out.append(_crypto.key_stanza(k, mk, container_id))
    present = {p for p in (_stanza_public(kind, body) for kind, body in out) if p is not None}
    for r in change.add_recipients:
        if r in present:
            raise RecipientError(f"{r.text()} is already a recipient of this container")
        present.add(r)
        out.append(_pubkeys.recipient_stanza(r, mk, container_id, change.kms))
    if len(out) > MAX_RECIPIENTS:
        raise RecipientError(f"a container holds at most {MAX_RECIPIENTS} recipients, this change needs {len(out)}")
    if not any(kind in KIND_NAMES for kind, _ in out):
        raise RecipientError(
            "the change would leave no passphrase or key (nor any other recipient) that can open the container"
        )
    return out


@dataclass(frozen=True)
class RewriteResult:
    """What :func:`rewrite_recipients` wrote."""

    header_len: int
    before: list[dict[str, Any]]
    after: list[dict[str, Any]]


def rewrite_recipients(
    path: str | os.PathLike[str],
    change: RecipientChange,
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: IdentityArg = None,
    kms: Any = None,
    sign_with: _signing.SignWith | None = None,
) -> RewriteResult:
    """Open ``path`` with the current credential, apply ``change`` and rewrite the header in place.

    The container is fully opened first (header MAC and index verified). The new header has
    exactly the old ``header_len``; if the new recipients do not fit, nothing is written. The
    write is one ``pwrite`` of the header at offset 0 followed by ``fsync``. An ``s3://`` URL
    is changed without downloading its frames (:mod:`qeltrix_v6._s3rewrite`: server-side copy
    of the unchanged bytes, conditional on the ETag seen at open).

    A signed container is refused unless ``sign_with`` is given; then its signature section is
    replaced by one over the new header (same frame digests and index), checked first.
    """
    if change.is_empty():
        raise RecipientError("nothing to change")
    signer = _signing.load_signer(sign_with) if sign_with is not None else None
    p = os.fspath(path)
    with contextlib.ExitStack() as stack:
        obj: Any = None
        s3: Any = None
        src: Any
        if _store.is_url(p):
            s3 = _s3rewrite.client()  # boto3 missing: say so before any request
            obj = src = _store.open_object(p)  # every later read and write is conditional on its ETag
        else:
            src = stack.enter_context(_locked(p))
        opened = open_reader(src, passphrase=passphrase, key=key, identity=identity, kms=kms)
        stack.callback(opened.close)
        r = opened.reader
        old_len = int(r.header_len)
        stanzas = [(int(kind), bytes(body)) for kind, body in r.stanzas]
        signed = bool(r.header_flags & _signing.HEADER_FLAG_SIGNED)
        archive = bool(r.header_flags & _core.HEADER_FLAG_ARCHIVE)  # kept by the rewrite (FORMAT.md section 16)
        expected_flags = (HEADER_FLAG_PERMUTED if r.perm_window else 0) | (_signing.HEADER_FLAG_SIGNED if signed else 0)
        expected_flags |= _core.HEADER_FLAG_ARCHIVE if archive else 0
        if r.header_flags != expected_flags:
            raise RecipientError(f"unexpected header flags {r.header_flags:#x}; refusing to rewrite")
        if signed and signer is None:
            raise RecipientError(
                "this container is signed: a new header would break its signature; give --sign-with KEY_FILE "
                "(sign_with=) to sign it again"
            )
        if not signed and signer is not None:
            raise RecipientError(
                "this container is not signed, and a header rewrite cannot add a signature; "
                "'qeltrix rotate --sign-with KEY_FILE' re-encrypts and signs it"
            )
        mk = opened.keys.mk
        cid = bytes(r.container_id)
        new_stanzas = plan_stanzas(stanzas, mk, cid, change)
        header, keys = build_header(
            mk, cid, r.cipher_id, r.block_size, r.perm_window, new_stanzas, old_len, signed=signed, archive=archive
        )
        if len(header) != old_len:
            raise RecipientError(
                f"the new recipients need a {len(header)}-byte header but this container's header has "
                f"{old_len} bytes; 'qeltrix rotate' rewrites the container with a larger header"
            )
        _check_new_header(header, new_stanzas, keys)
        section = b""
        if signer is not None:
            section = _signing.resign_section(r, header, signer)
        patches = [(0, header)]
        if section:
            footer, footer_offset = r.footer()
            patches.append((int(footer_offset) + len(footer), section))
        if obj is not None:
            _s3rewrite.patch_object(obj, patches, s3)
        else:
            fd = src.fileno()
            for offset, data in patches:
                _pwrite_all(fd, data, offset)
            os.fsync(fd)
    return RewriteResult(
        old_len,
        [describe_stanza(k, b) for k, b in stanzas],
        [describe_stanza(k, b) for k, b in new_stanzas],
    )


@contextlib.contextmanager
def _locked(p: str) -> Iterator[io.FileIO]:
    """``p`` opened read-write with an exclusive advisory lock (``passwd``, ``recipients``, ``rotate``)."""
    try:
        fd = os.open(p, os.O_RDWR)
    except FileNotFoundError:
        raise QeltrixIOError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise QeltrixIOError(f"{p}: is a directory") from None
    except OSError as e:
        raise QeltrixIOError(f"{p}: cannot open for writing: {e.strerror}") from None
    with io.FileIO(fd, "r+", closefd=True) as f:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QeltrixIOError(f"{p}: another process is changing it") from None
        except OSError:
            pass  # file systems without locks: proceed
        yield f


def _check_new_header(header: bytes, stanzas: list[tuple[int, bytes]], keys: _crypto.ContainerKeys) -> None:
    """Parse the sealed header back before writing it: a bug here must never reach the disk."""
    parsed = _core.parse_header(header)
    if [(int(k), bytes(b)) for k, b in parsed.stanzas] != stanzas:
        raise RecipientError("internal error: the new header does not round-trip; nothing written")
    if _crypto.sha256(parsed.header_checksummed) != parsed.header_sha256:
        raise AuthenticationError("internal error: the new header checksum is wrong; nothing written")
    keys.verify_header_mac(parsed.header_maced, parsed.header_mac)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise QeltrixIOError("short write while rewriting the header")
        view = view[n:]
        offset += n


@dataclass(frozen=True)
class RotateResult:
    """What :func:`rotate` wrote."""

    pt_len: int
    block_count: int
    container_len: int
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]]


def _rotated_stanzas(
    stanzas: list[tuple[int, bytes]],
    old_mk: bytes,
    old_cid: bytes,
    new_mk: bytes,
    new_cid: bytes,
    *,
    passphrase: str | bytes | None,
    key: bytes | None,
    kms: Any,
) -> tuple[list[tuple[int, bytes]], list[dict[str, Any]], list[dict[str, Any]]]:
    """New stanzas for the same recipients under ``new_mk``: ``(stanzas, kept, dropped)``.

    Public recipients (x25519, rsa-oaep, kms) are kept from the public information in their
    stanzas. A passphrase or key-file stanza is kept only if the given ``passphrase``/``key``
    opens it (a secret cannot be recovered from a stanza); the others are returned as dropped.
    """
    out: list[tuple[int, bytes]] = []
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for kind, body in stanzas:
        desc = describe_stanza(kind, body)
        new: tuple[int, bytes] | None = None
        if kind in _pubkeys.PUBLIC_KINDS:
            r = _stanza_public(kind, body)
            if r is not None:
                new = _pubkeys.recipient_stanza(r, new_mk, new_cid, kms)
        elif (
            kind == _crypto.KIND_KEY
            and key is not None
            and _crypto.unwrap_stanza(kind, body, old_cid, key=key, passphrase=None) == old_mk
        ):
            new = _crypto.key_stanza(key, new_mk, new_cid)
        elif (
            kind in PASSPHRASE_KINDS
            and passphrase is not None
            and _crypto.unwrap_stanza(kind, body, old_cid, key=None, passphrase=passphrase) == old_mk
        ):
            if kind == _crypto.KIND_ARGON2ID:
                params = {k: int(desc[k]) for k in ("t_cost", "m_cost_kib", "lanes")}
                new = _crypto.passphrase_stanza(passphrase, new_mk, new_cid, "argon2id", params)
            else:
                params = {"iterations": int(desc["iterations"])}
                new = _crypto.passphrase_stanza(passphrase, new_mk, new_cid, "pbkdf2", params)
        if new is None:
            dropped.append(desc)
        else:
            out.append(new)
            kept.append(desc)
    return out, kept, dropped


def rotate(
    path: str | os.PathLike[str],
    *,
    passphrase: str | bytes | None = None,
    key: bytes | None = None,
    identity: IdentityArg = None,
    kms: Any = None,
    drop_missing: bool = False,
    add_recipients: list[Recipient] | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    sign_with: _signing.SignWith | None = None,
) -> RotateResult:
    """Re-encrypt the container at ``path`` under a fresh MK and ``container_id``, in place.

    The plaintext streams from the old container's decrypting pipeline into the new one's
    encrypting pipeline through a pipe (memory bounded by the block size and worker count),
    into a temporary file beside ``path`` that replaces it only once complete (fsync, rename).
    Cipher, block size and placement are kept; recipients too, as :func:`_rotated_stanzas`
    explains: give the passphrase and/or key that should stay, or ``drop_missing=True`` to drop
    the secret-based recipients that were not given. After a rotation the old MK opens nothing
    in the new file.

    A signed container is refused unless ``sign_with`` is given; with it, the old signature
    must verify (every frame is checked against it while decrypting) and the new container is
    signed by ``sign_with``. An unsigned container rotated with ``sign_with`` becomes signed.
    """
    p = os.fspath(path)
    on_store = _store.is_url(p)
    signer = _signing.load_signer(sign_with) if sign_with is not None else None
    with contextlib.ExitStack() as stack:
        # An object is read pinned to the ETag seen here; a file is locked against other rotations.
        src: Any = _store.open_object(p) if on_store else stack.enter_context(_locked(p))
        opened = open_reader(src, passphrase=passphrase, key=key, identity=identity, kms=kms)
        stack.callback(opened.close)
        r = opened.reader
        if r.incomplete:
            raise RecipientError("this is a recovered, incomplete container; unpack it and pack it again instead")
        if r.header_flags & _signing.HEADER_FLAG_SIGNED:
            if signer is None:
                raise RecipientError(
                    "this container is signed: the rotated one would not be; give --sign-with KEY_FILE "
                    "(sign_with=) to sign it"
                )
            if not _signing.check_signature(r).valid:
                raise SignatureError("the container's signature does not verify; refusing to re-sign it")
            r.require_frame_digests()  # rotate only what was signed
        old_mk, old_cid = opened.keys.mk, bytes(r.container_id)
        new_mk = _crypto.random_bytes(_crypto.MK_LEN)
        new_cid = _crypto.random_bytes(_core.CONTAINER_ID_LEN)
        stanzas = [(int(k), bytes(b)) for k, b in r.stanzas]
        new_stanzas, kept, dropped = _rotated_stanzas(
            stanzas, old_mk, old_cid, new_mk, new_cid, passphrase=passphrase, key=key, kms=kms
        )
        if dropped and not drop_missing:
            names = "; ".join(recipient_summary(d) for d in dropped)
            raise RecipientError(
                f"cannot keep {len(dropped)} recipient(s) without their secret: {names}; give that passphrase "
                "or key file too, or drop them explicitly (--drop-missing)"
            )
        present = {x for x in (_stanza_public(k, b) for k, b in new_stanzas) if x is not None}
        for rcp in add_recipients or []:
            if rcp not in present:
                present.add(rcp)
                new_stanzas.append(_pubkeys.recipient_stanza(rcp, new_mk, new_cid, kms))
        if not new_stanzas:
            raise RecipientError("no recipient would be left to open the rotated container")
        if len(new_stanzas) > MAX_RECIPIENTS:
            raise RecipientError(f"a container holds at most {MAX_RECIPIENTS} recipients")
        block_size, perm_window = int(r.block_size), int(r.perm_window)
        header, keys = build_header(
            new_mk,
            new_cid,
            int(r.cipher_id),
            block_size,
            perm_window,
            new_stanzas,
            int(r.header_len),
            signed=signer is not None,
            archive=bool(r.header_flags & _core.HEADER_FLAG_ARCHIVE),
        )
        _check_new_header(header, new_stanzas, keys)
        total = int(r.pt_total_len)

        errors: list[BaseException] = []
        atomic: AtomicOutput | None = None
        if on_store:
            # A multipart upload that completes only if the object still has the ETag it was
            # read at: the rotated object replaces that one, never another writer's.
            out: Any = _store.create_upload(p, force=True, if_match=src.etag)
            stack.callback(out.abort)  # a no-op once complete
            dst: Any = out
        else:
            mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
            atomic = AtomicOutput(p, overwrite=True)
            out = stack.enter_context(atomic)
            os.fchmod(out.fileno(), mode)
            dst = out.fileno()
        rfd, wfd = os.pipe()

        def decrypt() -> None:
            try:
                r.unpack_to(wfd, workers, None)
            except BaseException as e:
                errors.append(e)
            finally:
                _close_quietly(wfd)

        t = threading.Thread(target=decrypt, name="qeltrix-rotate-decrypt", daemon=True)
        try:
            t.start()
        except BaseException:
            _close_quietly(rfd)
            _close_quietly(wfd)
            raise
        try:
            pt_len, block_count, container_len = _core.pack_stream(
                rfd,
                dst,
                keys,
                header,
                block_size,
                perm_window,
                keys.k_perm,
                workers,
                progress,
                total,
                signer,
            )
        finally:
            _close_quietly(rfd)  # a decryptor still writing gets EPIPE and stops
            t.join()
        if errors:
            raise errors[0]
        if pt_len != total:
            raise QeltrixIOError(f"rotation read {pt_len} of {total} plaintext bytes; the file was not replaced")
        if atomic is not None:
            atomic.commit()
        else:
            out.complete()
    return RotateResult(int(pt_len), int(block_count), int(container_len), kept, dropped)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


__all__ = [
    "KIND_NAMES",
    "PASSPHRASE_KINDS",
    "RecipientChange",
    "RecipientError",
    "RewriteResult",
    "RotateResult",
    "describe_stanza",
    "plan_stanzas",
    "recipient_summary",
    "rewrite_recipients",
    "rotate",
]
