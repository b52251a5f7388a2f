"""Signed containers: who wrote a container (docs/FORMAT.md section 15).

The MK authenticates *integrity* (every byte was written by an MK holder), not *origin*:
anyone with a recipient's public key can write a whole container for it. A signed container
carries an Ed25519 signature by its writer over the header, the digest of every frame and the
index. A reader given ``signers`` (pinned ``qltx-ed25519:`` public keys) checks the signature
when it opens the container and each frame's digest before it decrypts that frame; anything
unsigned, signed by another key, or changed since signing raises :class:`SignatureError`.

The Rust core parses and encodes the section (``qeltrix-format`` ``signature.rs``) and
builds ``signed_message``; every hash and Ed25519 operation is in :mod:`._crypto`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from . import _core, _crypto, _store
from ._pubkeys import SIGNER_PREFIX, decode_signer, encode_signer
from .errors import MalformedError, QeltrixIOError, SignatureError

HEADER_FLAG_SIGNED: int = _core.HEADER_FLAG_SIGNED
_MAX_SIGNERS_FILE = 1 << 20

SignWith = bytes | str | os.PathLike[str] | _crypto.Ed25519Signer
SignersArg = Iterable[str | bytes] | str | bytes | None


class SignedReader(Protocol):
    """What :func:`check_signature` needs from a ``_core.Reader`` (after ``load_index``)."""

    @property
    def header_flags(self) -> int: ...
    @property
    def header_bytes(self) -> bytes: ...
    @property
    def block_count(self) -> int: ...
    def footer(self) -> tuple[bytes, int]: ...
    def signature_parts(self) -> tuple[bytes, bytes, bytes] | None: ...
    def require_frame_digests(self) -> None: ...


def parse_signers(items: SignersArg) -> frozenset[bytes]:
    """Pinned signer keys from ``qltx-ed25519:`` texts or raw 32-byte keys."""
    if items is None:
        return frozenset()
    seq: Iterable[str | bytes] = [items] if isinstance(items, str | bytes | bytearray) else items
    out = set()
    for item in seq:
        if isinstance(item, str):
            out.add(decode_signer(item))
        elif len(item) == _crypto.ED25519_LEN:
            out.add(bytes(item))
        else:
            raise MalformedError("a signer is a qltx-ed25519: public key or 32 raw bytes")
    return frozenset(out)


def read_signers_file(path: str | os.PathLike[str]) -> list[str]:
    """The ``qltx-ed25519:`` keys in a text file, one per line; blank lines and ``#`` comments ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read(_MAX_SIGNERS_FILE).splitlines()
    except FileNotFoundError:
        raise QeltrixIOError(f"signers file {os.fspath(path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QeltrixIOError(f"signers file {os.fspath(path)}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            decode_signer(line)
        except MalformedError as e:
            raise MalformedError(f"{os.fspath(path)}, line {n}: {e}") from None
        out.append(line)
    return out


def load_signer(sign_with: SignWith) -> _crypto.Ed25519Signer:
    """A signer from key bytes (PEM, or a raw 32-byte seed), the path of a PEM key file (never a
    raw 32-byte file: that is a key file or an X25519 identity), or a signer."""
    if isinstance(sign_with, _crypto.Ed25519Signer):
        return sign_with
    if isinstance(sign_with, str | os.PathLike):
        try:
            with open(sign_with, "rb") as f:
                data = f.read(1 << 16)
        except FileNotFoundError:
            raise QeltrixIOError(f"signing key {os.fspath(sign_with)}: no such file") from None
        except OSError as e:
            raise QeltrixIOError(f"signing key {os.fspath(sign_with)}: {e.strerror}") from None
        if b"-----BEGIN" not in data:
            # A 32-byte file is a key file or an X25519 identity: never reuse it as a seed.
            raise MalformedError(
                f"signing key {os.fspath(sign_with)}: not a PEM Ed25519 private key (qeltrix keygen --ed25519)"
            )
        try:
            return _crypto.Ed25519Signer(data)
        except MalformedError as e:
            raise MalformedError(f"signing key {os.fspath(sign_with)}: {e}") from None
    return _crypto.Ed25519Signer(bytes(sign_with))


def signed_message(
    header: bytes, block_count: int, frame_digests: bytes, footer: bytes, footer_offset: int, signer_pub: bytes
) -> bytes:
    """``signed_message`` of FORMAT.md section 15 (encoded by the Rust codec)."""
    return bytes(
        _core.signed_message(
            _crypto.sha256(header),
            block_count,
            _crypto.sha256(frame_digests),
            _crypto.sha256(footer),
            footer_offset,
            signer_pub,
        )
    )


@dataclass(frozen=True)
class Origin:
    """What a reader can say about who wrote a container.

    ``signed``: the header's SIGNED flag; ``signer``: the ``qltx-ed25519:`` key in the section;
    ``valid``: the signature verifies over the header, digests and index (frames are checked
    against their digests as they are read); ``pinned``: the signer is one the caller required.
    """

    signed: bool
    signer: str | None = None
    valid: bool = False
    pinned: bool = False

    def text(self) -> str:
        """One line for ``verify``: what is and is not vouched for."""
        if not self.signed:
            return "not authenticated: unsigned; anyone with a recipient's public key could have written it"
        if not self.valid:
            return f"INVALID signature (claims {self.signer}): changed after signing, or forged"
        if self.pinned:
            return f"signed by {self.signer} (valid, pinned)"
        return f"signed by {self.signer} (valid; not pinned: pass --signer to require it)"

    def as_json(self) -> dict[str, Any]:
        return {"signed": self.signed, "signer": self.signer, "valid": self.valid, "pinned": self.pinned}


def check_signature(reader: SignedReader, signers: frozenset[bytes] = frozenset()) -> Origin:
    """Verify the signature section of a loaded reader (check S2 of FORMAT.md section 8).

    Does not raise: returns what holds. Frames are not read here; a caller that accepts the
    result turns on the per-frame check with ``reader.require_frame_digests()``.
    """
    if not reader.header_flags & HEADER_FLAG_SIGNED:
        return Origin(signed=False)
    parts = reader.signature_parts()
    if parts is None:  # pragma: no cover - load_index reads the section of every signed container
        return Origin(signed=True)
    signer_pub, digests, signature = (bytes(x) for x in parts)
    footer, footer_offset = reader.footer()
    message = signed_message(
        bytes(reader.header_bytes), int(reader.block_count), digests, bytes(footer), int(footer_offset), signer_pub
    )
    valid = _crypto.ed25519_verify(signer_pub, signature, message)
    return Origin(signed=True, signer=encode_signer(signer_pub), valid=valid, pinned=valid and signer_pub in signers)


def require_signed_flag(header_flags: int) -> None:
    """Check S1 before any key is tried: a reader that requires a signer rejects unsigned containers."""
    if not header_flags & HEADER_FLAG_SIGNED:
        raise SignatureError("the container is not signed, and a signer is required")


def enforce(reader: SignedReader, signers: frozenset[bytes]) -> Origin:
    """Checks S1-S2 now and S3 on every later frame read; :class:`SignatureError` otherwise."""
    require_signed_flag(int(reader.header_flags))
    origin = check_signature(reader, signers)
    if not origin.valid:
        raise SignatureError("the container's signature does not verify: changed after signing, or forged")
    if not origin.pinned:
        raise SignatureError(f"the container is signed by {origin.signer}, which is not a required signer")
    reader.require_frame_digests()
    return origin


def resign_section(reader: SignedReader, new_header: bytes, signer: _crypto.Ed25519Signer) -> bytes:
    """A new signature section for ``reader``'s frames and index under a rewritten header.

    The old signature must verify first (by whichever key made it), so that re-signing never
    vouches for frame digests nobody signed (FORMAT.md section 15.3).
    """
    origin = check_signature(reader)
    if not origin.valid:
        raise SignatureError("the container's current signature does not verify; refusing to re-sign it")
    parts = reader.signature_parts()
    assert parts is not None
    digests = bytes(parts[1])
    footer, footer_offset = reader.footer()
    message = signed_message(
        new_header, int(reader.block_count), digests, bytes(footer), int(footer_offset), signer.public
    )
    return bytes(_core.encode_signature_section(signer.public, digests, signer.sign(message)))


__all__ = [
    "HEADER_FLAG_SIGNED",
    "SIGNER_PREFIX",
    "Origin",
    "check_signature",
    "decode_signer",
    "encode_signer",
    "enforce",
    "load_signer",
    "parse_signers",
    "public_origin",
    "read_signers_file",
    "require_signed_flag",
    "resign_section",
]


def public_origin(path: str | os.PathLike[str], signers: frozenset[bytes] = frozenset()) -> Origin:
    """Check a container's signature without its MK (FORMAT.md section 15.2), from public bytes.

    Proves that the header, the encrypted index and the list of frame digests were signed by
    ``signer``; the frames themselves are checked against their digests only by a reader that
    holds the MK (the frame boundaries are in the encrypted index).
    """
    import struct

    if _store.is_url(path):
        src: Any = _store.ObjectFile(str(path))
        reader = _core.Reader(src.obj)
    else:
        src = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
        reader = _core.Reader(src.fileno())
    with src as f:
        if not int(reader.header_flags) & HEADER_FLAG_SIGNED:
            return Origin(signed=False)
        file_len = int(reader.file_len)
        trailer_len, entry_len, footer_min = _core.TRAILER_LEN, _core.INDEX_ENTRY_LEN, _core.INDEX_FOOTER_MIN_LEN
        if file_len < int(reader.header_len) + trailer_len:
            return Origin(signed=True)
        f.seek(file_len - trailer_len)
        footer_offset, footer_len, magic = struct.unpack("<QQ8s", f.read(trailer_len))
        if magic != _core.TRAILER_MAGIC or footer_len < footer_min or (footer_len - footer_min) % entry_len:
            return Origin(signed=True)
        block_count = (footer_len - footer_min) // entry_len
        sig_len = _core.SIG_FIXED_LEN + _core.FRAME_DIGEST_LEN * block_count
        if footer_offset < int(reader.header_len) or footer_offset + footer_len + sig_len + trailer_len != file_len:
            return Origin(signed=True)
        f.seek(footer_offset)
        footer = f.read(footer_len)
        section = f.read(sig_len)
    pub_len, signature_len = _core.SIGNER_PUB_LEN, _core.SIGNATURE_LEN
    signer_pub, digests, signature = section[:pub_len], section[pub_len:-signature_len], section[-signature_len:]
    message = signed_message(bytes(reader.header_bytes), block_count, digests, footer, footer_offset, signer_pub)
    valid = _crypto.ed25519_verify(signer_pub, signature, message)
    return Origin(signed=True, signer=encode_signer(signer_pub), valid=valid, pinned=valid and signer_pub in signers)
