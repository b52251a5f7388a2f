"""Recipients of a container: describe them, and change them by rewriting the header only.

``qeltrix passwd`` changes a container's passphrase, or adds and removes key-file recipients,
without touching a single block: the master key (MK) stays the same, only the stanzas that
wrap it change (docs/FORMAT.md section 3.1). The new header is sealed to exactly the length
of the old one (its padding absorbs the difference) and written in place at offset 0.

What this does not do: it does not rotate the MK. Anyone who kept a copy of the container
(or of its old header) can still open that copy with a removed credential. To revoke a
credential for good, unpack and pack again.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from . import _core, _crypto
from ._container import HEADER_FLAG_PERMUTED, build_header, open_reader
from .errors import AuthenticationError, QeltrixError, QeltrixIOError

KIND_NAMES = {_crypto.KIND_KEY: "key", _crypto.KIND_ARGON2ID: "argon2id", _crypto.KIND_PBKDF2: "pbkdf2"}
PASSPHRASE_KINDS = frozenset({_crypto.KIND_ARGON2ID, _crypto.KIND_PBKDF2})

MAX_RECIPIENTS = 64  # docs/FORMAT.md section 9
_ARGON2ID_PARAMS = struct.Struct("<16sIII")
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
        _, t_cost, m_cost_kib, lanes = _ARGON2ID_PARAMS.unpack_from(body)
        out.update(t_cost=t_cost, m_cost_kib=m_cost_kib, lanes=lanes)
    elif kind == _crypto.KIND_PBKDF2:
        _, iterations = _PBKDF2_PARAMS.unpack_from(body)
        out.update(iterations=iterations)
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

    def is_empty(self) -> bool:
        return self.new_passphrase is None and not (self.remove_passphrase or self.add_keys or self.remove_keys)


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
        if hit:
            continue
        out.append((kind, bytes(body)))
    if new_pw_stanza is not None:
        out.append(new_pw_stanza)
    for j, ok in enumerate(removed):
        if not ok:
            which = f" #{j + 1}" if len(change.remove_keys) > 1 else ""
            raise RecipientError(f"the key file to remove{which} is not a recipient of this container")
    for k in change.add_keys:
        if any(_opens_with_key(kind, body, container_id, k, mk) for kind, body in out):
            raise RecipientError("the key file to add is already a recipient of this container")
        out.append(_crypto.key_stanza(k, mk, container_id))
    if len(out) > MAX_RECIPIENTS:
        raise RecipientError(f"a container holds at most {MAX_RECIPIENTS} recipients, this change needs {len(out)}")
    if not any(kind in KIND_NAMES for kind, _ in out):
        raise RecipientError("the change would leave no passphrase or key that can open the container")
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
) -> RewriteResult:
    """Open ``path`` with the current credential, apply ``change`` and rewrite the header in place.

    The container is fully opened first (header MAC and index verified). The new header has
    exactly the old ``header_len``; if the new recipients do not fit, nothing is written. The
    write is one ``pwrite`` of the header at offset 0 followed by ``fsync``.
    """
    if change.is_empty():
        raise RecipientError("nothing to change")
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDWR)
    except FileNotFoundError:
        raise QeltrixIOError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise QeltrixIOError(f"{p}: is a directory") from None
    except OSError as e:
        raise QeltrixIOError(f"{p}: cannot open for writing: {e.strerror}") from None
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(io.FileIO(fd, "r+", closefd=True))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QeltrixIOError(f"{p}: another process is changing its recipients") from None
        except OSError:
            pass  # file systems without locks: proceed
        opened = open_reader(f, passphrase=passphrase, key=key)
        stack.callback(opened.close)
        r = opened.reader
        old_len = int(r.header_len)
        stanzas = [(int(kind), bytes(body)) for kind, body in r.stanzas]
        expected_flags = HEADER_FLAG_PERMUTED if r.perm_window else 0
        if r.header_flags != expected_flags:
            raise RecipientError(f"unexpected header flags {r.header_flags:#x}; refusing to rewrite")
        mk = opened.keys.mk
        cid = bytes(r.container_id)
        new_stanzas = plan_stanzas(stanzas, mk, cid, change)
        header, keys = build_header(mk, cid, r.cipher_id, r.block_size, r.perm_window, new_stanzas, old_len)
        if len(header) != old_len:
            raise RecipientError(
                f"the new recipients need a {len(header)}-byte header but this container's header has "
                f"{old_len} bytes; unpack and pack again to change them"
            )
        _check_new_header(header, new_stanzas, keys)
        _pwrite_all(fd, header, 0)
        os.fsync(fd)
    return RewriteResult(
        old_len,
        [describe_stanza(k, b) for k, b in stanzas],
        [describe_stanza(k, b) for k, b in new_stanzas],
    )


def _check_new_header(header: bytes, stanzas: list[tuple[int, bytes]], keys: _crypto.ContainerKeys) -> None:
    """Parse the sealed header back before writing it: a bug here must never reach the disk."""
    parsed = _core.Reader(io.BytesIO(header))
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


__all__ = [
    "KIND_NAMES",
    "PASSPHRASE_KINDS",
    "RecipientChange",
    "RecipientError",
    "RewriteResult",
    "describe_stanza",
    "plan_stanzas",
    "recipient_summary",
    "rewrite_recipients",
]
