"""Recipients named by public information: X25519 and RSA public keys, KMS key ids.

A *recipient* is what a writer needs to seal a container's MK for someone without holding any
secret: an X25519 public key (``qltx-x25519:...``, printed by ``qeltrix keygen --x25519``), an
RSA public key (PEM, 3072 bits or more) or a KMS key (``kms:KEY_ID``, wrapped by the KMS).
Their stanzas (docs/FORMAT.md section 3.1, kinds 4-6) keep that public information, so the
recipients of a container can be listed, removed, and kept when its MK is rotated.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import _core, _crypto
from .errors import MalformedError

KMS_PREFIX = "kms:"
X25519_PREFIX = "qltx-x25519:"
SIGNER_PREFIX = "qltx-ed25519:"
KMS_MAX_KEY_ID_LEN: int = _core.KMS_MAX_KEY_ID_LEN
KMS_MAX_BLOB_LEN: int = _core.KMS_MAX_BLOB_LEN
PUBLIC_KINDS = frozenset({_crypto.KIND_X25519, _crypto.KIND_RSA_OAEP, _crypto.KIND_KMS})


@dataclass(frozen=True)
class Recipient:
    """One public recipient: its stanza kind and its public material.

    ``public`` is the raw 32-byte key (x25519), the DER SubjectPublicKeyInfo (rsa-oaep) or the
    UTF-8 key id (kms).
    """

    kind: int
    public: bytes

    def text(self) -> str:
        """How a user names this recipient (``qltx-x25519:...``, ``rsa:SHA256:...``, ``kms:...``)."""
        return recipient_text(self.kind, self.public)


def _encode_key(prefix: str, public: bytes, length: int, what: str) -> str:
    """``prefix`` + base64url(``public || SHA256(public)[:4]``), unpadded: a copy-pasteable
    public key whose type is in its name and whose typos the checksum catches."""
    if len(public) != length:
        raise MalformedError(f"an {what} public key is {length} bytes")
    return prefix + base64.urlsafe_b64encode(bytes(public) + _crypto.sha256(public)[:4]).decode().rstrip("=")


def _decode_key(prefix: str, text: str, what: str, hint: str) -> bytes:
    text = text.strip()
    if not text.startswith(prefix):
        raise MalformedError(f"{what} starts with {prefix!r}{hint}")
    body = text[len(prefix) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise MalformedError("the public key is not valid base64url") from None
    if len(raw) != 36 or _crypto.sha256(raw[:32])[:4] != raw[32:]:
        raise MalformedError("the public key is damaged (bad length or checksum): copy it again")
    return raw[:32]


def encode_public_key(public: bytes) -> str:
    """An X25519 public key as ``qltx-x25519:...`` (what ``qeltrix keygen --x25519`` prints)."""
    return _encode_key(X25519_PREFIX, public, _crypto.X25519_LEN, "X25519")


def decode_public_key(text: str) -> bytes:
    """The 32 bytes of a ``qltx-x25519:`` key, checking prefix and checksum."""
    return _decode_key(X25519_PREFIX, text, "a Qeltrix X25519 public key", "")


def encode_signer(public: bytes) -> str:
    """An Ed25519 signer key as ``qltx-ed25519:...`` (``qeltrix keygen --ed25519``)."""
    return _encode_key(SIGNER_PREFIX, public, _crypto.ED25519_LEN, "Ed25519")


def decode_signer(text: str) -> bytes:
    """The 32-byte public key of a ``qltx-ed25519:`` text, checking prefix and checksum."""
    return _decode_key(SIGNER_PREFIX, text, "a signer is a public key that", " (qeltrix keygen --ed25519)")


def rsa_fingerprint(spki: bytes) -> str:
    """``SHA256:<hex>`` of the DER SubjectPublicKeyInfo (``openssl pkey -pubin -outform DER | sha256sum``)."""
    return "SHA256:" + _crypto.sha256(spki).hex()


def recipient_text(kind: int, public: bytes) -> str:
    if kind == _crypto.KIND_X25519:
        return encode_public_key(public)
    if kind == _crypto.KIND_RSA_OAEP:
        return "rsa:" + rsa_fingerprint(public)
    if kind == _crypto.KIND_KMS:
        return KMS_PREFIX + public.decode("utf-8", "replace")
    return f"kind-{kind}"


def parse_recipient(item: str | bytes | Recipient) -> Recipient:
    """A recipient from its text or bytes.

    - ``qltx-x25519:...`` (checked prefix and checksum), or 32 raw bytes: an X25519 key;
    - a PEM ``PUBLIC KEY`` (text or bytes) or DER SubjectPublicKeyInfo bytes: an RSA key;
    - ``kms:KEY_ID`` (a key id, ARN or ``alias/NAME``): a KMS key.
    """
    if isinstance(item, Recipient):
        return item
    if isinstance(item, str):
        text = item.strip()
        if text.startswith(X25519_PREFIX):
            return Recipient(_crypto.KIND_X25519, _crypto.check_x25519_public(decode_public_key(text)))
        if text.startswith(KMS_PREFIX):
            key_id = text[len(KMS_PREFIX) :].strip()
            if not key_id or len(key_id.encode()) > KMS_MAX_KEY_ID_LEN:
                raise MalformedError(f"a KMS recipient is kms:KEY_ID with a key id of 1..{KMS_MAX_KEY_ID_LEN} bytes")
            return Recipient(_crypto.KIND_KMS, key_id.encode("utf-8"))
        if "-----BEGIN" in text:
            return Recipient(_crypto.KIND_RSA_OAEP, _crypto.rsa_public_spki(text.encode()))
        raise MalformedError(
            f"not a recipient: {text[:40]!r} (expected qltx-x25519:..., kms:KEY_ID or a PEM RSA public key)"
        )
    data = bytes(item)
    if len(data) == _crypto.X25519_LEN:
        return Recipient(_crypto.KIND_X25519, _crypto.check_x25519_public(data))
    return Recipient(_crypto.KIND_RSA_OAEP, _crypto.rsa_public_spki(data))


def parse_recipients(items: Iterable[str | bytes | Recipient] | None) -> list[Recipient]:
    """Parse and de-duplicate (keeping order)."""
    out: list[Recipient] = []
    for item in items or ():
        r = parse_recipient(item)
        if r not in out:
            out.append(r)
    return out


def read_recipients_file(path: str | os.PathLike[str]) -> list[Recipient]:
    """Recipients listed in a text file: one ``qltx-x25519:``/``kms:`` entry per line and/or PEM
    public-key blocks; blank lines and lines starting with ``#`` are ignored."""
    with open(path, encoding="utf-8") as f:
        lines = f.read(1 << 20).splitlines()
    out: list[Recipient] = []
    pem: list[str] | None = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if pem is not None:
            pem.append(line)
            if line.startswith("-----END"):
                out.append(parse_recipient("\n".join(pem) + "\n"))
                pem = None
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("-----BEGIN"):
            pem = [line]
            continue
        try:
            out.append(parse_recipient(line))
        except MalformedError as e:
            raise MalformedError(f"{os.fspath(path)}, line {n}: {e}") from None
    if pem is not None:
        raise MalformedError(f"{os.fspath(path)}: a PEM block is not terminated")
    return out


def recipient_stanza(r: Recipient, mk: bytes, container_id: bytes, kms: object = None) -> tuple[int, bytes]:
    """The stanza sealing ``mk`` to ``r`` (KMS recipients need a :class:`~qeltrix_v6.KmsConfig`)."""
    if r.kind == _crypto.KIND_X25519:
        return _crypto.x25519_stanza(r.public, mk, container_id)
    if r.kind == _crypto.KIND_RSA_OAEP:
        return _crypto.rsa_stanza(r.public, mk, container_id)
    if r.kind == _crypto.KIND_KMS:
        from . import _kms

        return _kms.kms_stanza(_kms.config_or_default(kms), r.public.decode("utf-8"), mk, container_id)
    raise MalformedError(f"unknown recipient kind {r.kind}")


def kms_stanza_parts(body: bytes) -> tuple[str, bytes]:
    """``(key_id, ciphertext_blob)`` of a ``kms`` stanza (structure checked)."""
    if len(body) < 4:
        raise MalformedError("kms stanza body too short")
    (n,) = struct.unpack_from("<H", body)
    if not 1 <= n <= KMS_MAX_KEY_ID_LEN or 2 + n + 2 > len(body):
        raise MalformedError("kms stanza has a bad key id length")
    (m,) = struct.unpack_from("<H", body, 2 + n)
    if not 1 <= m <= KMS_MAX_BLOB_LEN or 2 + n + 2 + m != len(body):
        raise MalformedError("kms stanza has a bad ciphertext length")
    try:
        key_id = body[2 : 2 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedError("kms stanza key id is not UTF-8") from None
    return key_id, bytes(body[4 + n :])


def stanza_recipient(kind: int, body: bytes) -> Recipient | None:
    """The public recipient a stanza is sealed to, or ``None`` for secret-based kinds."""
    if kind == _crypto.KIND_X25519:
        return Recipient(kind, _crypto.x25519_stanza_recipient(body))
    if kind == _crypto.KIND_RSA_OAEP:
        return Recipient(kind, _crypto.rsa_stanza_parts(body)[0])
    if kind == _crypto.KIND_KMS:
        return Recipient(kind, kms_stanza_parts(body)[0].encode("utf-8"))
    return None


def load_identities(
    items: bytes | _crypto.Identity | Sequence[bytes | _crypto.Identity] | None,
) -> list[_crypto.Identity]:
    """Identities from raw bytes (32-byte X25519 key or PEM RSA private key) or objects."""
    if items is None:
        return []
    seq: Sequence[bytes | _crypto.Identity] = (
        [items] if isinstance(items, bytes | bytearray | _crypto.Identity) else items
    )
    return [i if isinstance(i, _crypto.Identity) else _crypto.Identity(bytes(i)) for i in seq]


__all__ = [
    "KMS_PREFIX",
    "PUBLIC_KINDS",
    "Recipient",
    "kms_stanza_parts",
    "load_identities",
    "parse_recipient",
    "parse_recipients",
    "read_recipients_file",
    "recipient_stanza",
    "recipient_text",
    "rsa_fingerprint",
    "stanza_recipient",
]
