"""The crypto layer: the only module that uses ``cryptography`` (docs/FORMAT.md 3.1, 4, 5, 6).

The Rust core frames, indexes and schedules blocks; every AEAD, HKDF, HMAC, KDF and SHA-256
operation it needs is a call into this module. The AEAD and hash calls release the GIL
(``cryptography`` >= 50) and write into caller-owned buffers (``encrypt_into`` /
``decrypt_into``), so two Rust worker threads encrypt two blocks at once without copies.
"""

from __future__ import annotations

import os
import struct
import threading
import unicodedata

# hmac.compare_digest itself, without importing hmac (which loads the interpreter's own OpenSSL,
# a few ms of every process's start, for one function).
from _operator import _compare_digest as compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _core
from .errors import AuthenticationError, MalformedError, WrongKeyError

# Domain-separation labels (FORMAT.md section 4 and 3.1).
LABEL_HEADER_MAC = b"qeltrix-v6 header mac"
LABEL_META = b"qeltrix-v6 v6-c metadata"
LABEL_INDEX = b"qeltrix-v6 index"
LABEL_PERM = b"qeltrix-v6 permutation"
LABEL_CDK = b"qeltrix-v6 cdk"
LABEL_RECIPIENT_KEY = b"qeltrix-v6 recipient key"
LABEL_RECIPIENT_X25519 = b"qeltrix-v6 recipient x25519"
LABEL_RECIPIENT_RSA = b"qeltrix-v6 recipient rsa-oaep"

# Format constants are defined once, in qeltrix-format, and read from _core.
CIPHER_AES_256_GCM: int = _core.CIPHER_AES_256_GCM
CIPHER_CHACHA20_POLY1305: int = _core.CIPHER_CHACHA20_POLY1305
CIPHERS = {"aes-256-gcm": CIPHER_AES_256_GCM, "chacha20-poly1305": CIPHER_CHACHA20_POLY1305}
Aead = AESGCM | ChaCha20Poly1305
_AEADS: dict[int, type[AESGCM] | type[ChaCha20Poly1305]] = {
    CIPHER_AES_256_GCM: AESGCM,
    CIPHER_CHACHA20_POLY1305: ChaCha20Poly1305,
}

KIND_KEY: int = _core.KIND_KEY
KIND_ARGON2ID: int = _core.KIND_ARGON2ID
KIND_PBKDF2: int = _core.KIND_PBKDF2
# The stanza kinds a passphrase opens.
PASSPHRASE_KINDS = frozenset({KIND_ARGON2ID, KIND_PBKDF2})
KIND_X25519: int = _core.KIND_X25519
KIND_RSA_OAEP: int = _core.KIND_RSA_OAEP
KIND_KMS: int = _core.KIND_KMS
KIND_HANDSHAKE: int = _core.KIND_HANDSHAKE

MK_LEN: int = _core.MK_LEN
KEY_LEN: int = _core.MK_LEN
NONCE_LEN: int = _core.NONCE_LEN
TAG_LEN: int = _core.TAG_LEN
SALT_LEN: int = _core.SALT_LEN
META_PT_LEN: int = _core.META_PT_LEN
META_FRAME_LEN: int = _core.META_FRAME_LEN

ARGON2ID_DEFAULTS = {"t_cost": 3, "m_cost_kib": 65536, "lanes": 4}
PBKDF2_DEFAULT_ITERATIONS = 600_000

_DATA_AAD = struct.Struct("<QIB")
_ARGON2ID_BODY = struct.Struct("<16sIII12s48s")
_PBKDF2_BODY = struct.Struct("<16sI12s48s")
_KEY_BODY = struct.Struct("<12s48s")
# V6-C metadata plaintext (FORMAT.md section 5): block_index, pt_len, meta_flags, 3 reserved
# zero bytes, cdk_salt, data_nonce, pt_sha256.
_META_PT = struct.Struct("<QIB3x16s12s32s")
# A frame's three random fields, drawn at once: cdk_salt, data_nonce, meta_nonce.
_FRAME_RANDOM_LEN = 16 + 12 + 12
_META_NONCE_AT = 16 + 12
# One algorithm object for every hash, HKDF and HMAC: it is immutable, and constructing one
# per call is a measurable part of a block's fixed cost.
_SHA256 = hashes.SHA256()
# A SHA-256 context that is never updated: each hash starts as a copy of it, which skips the
# algorithm check and fetch of a new `hashes.Hash` (0.4 of 0.8 us per hash; issue 12). Copying
# only reads it, so every thread may copy the same one.
_SHA256_CTX = hashes.Hash(_SHA256)


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of ``data``."""
    h = _SHA256_CTX.copy()
    h.update(data)
    return h.finalize()


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(_SHA256, length, salt, info).derive(ikm)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104)."""
    h = _crypto_hmac.HMAC(key, _SHA256)
    h.update(data)
    return h.finalize()


LABEL_SIGNED_URL = b"qeltrix-v6 signed url"


def signed_url_mac(url_key: bytes, expires: int, path: str) -> bytes:
    """The MAC of a signed SeekServer URL (README "Browsers and CDNs"):
    ``HMAC-SHA256(url_key, "qeltrix-v6 signed url" || LF || decimal(expires) || LF || path)``,
    ``path`` being the percent-decoded URL path in UTF-8."""
    message = LABEL_SIGNED_URL + b"\n" + str(expires).encode("ascii") + b"\n" + path.encode("utf-8")
    return hmac_sha256(url_key, message)


def signed_url_mac_ok(url_key: bytes, expires: int, path: str, mac: bytes) -> bool:
    """Whether ``mac`` is :func:`signed_url_mac` of these inputs (compared in constant time)."""
    return compare_digest(signed_url_mac(url_key, expires, path), mac)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


# A frame's random fields come from a per-thread buffer of the OS CSPRNG's output, refilled
# every _FRAME_RANDOM_BATCH frames (issue 12). `os.urandom` releases the interpreter lock for
# its system call; once per frame, that handed the lock to another gateway worker waiting for
# it and made this one wait to get it back (futex wake-ups and context switches per frame).
# The bytes are the same CSPRNG output, each handed out once: the buffer is the thread's own
# and a forked child starts with none (it must not reuse its parent's).
_FRAME_RANDOM_BATCH = 64
_frame_random_pool = threading.local()


def _forget_frame_random() -> None:
    global _frame_random_pool  # replaced whole in a forked child
    _frame_random_pool = threading.local()


os.register_at_fork(after_in_child=_forget_frame_random)


def _frame_random() -> bytes:
    """``cdk_salt || data_nonce || meta_nonce`` for one frame (``_FRAME_RANDOM_LEN`` bytes)."""
    pool = _frame_random_pool
    buf: bytes = getattr(pool, "buf", b"")
    at: int = getattr(pool, "at", 0)
    end = at + _FRAME_RANDOM_LEN
    if end > len(buf):
        pool.buf = buf = os.urandom(_FRAME_RANDOM_LEN * _FRAME_RANDOM_BATCH)
        at, end = 0, _FRAME_RANDOM_LEN
    pool.at = end
    return buf[at:end]


def normalize_passphrase(passphrase: str | bytes) -> bytes:
    """Passphrases are NFC-normalised UTF-8 (FORMAT.md 3.1); bytes pass through."""
    if isinstance(passphrase, bytes):
        return passphrase
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


# --- recipients (FORMAT.md 3.1) -------------------------------------------------------


def _wrap(kek: bytes, mk: bytes, container_id: bytes, kind: int) -> tuple[bytes, bytes]:
    nonce = random_bytes(NONCE_LEN)
    return nonce, AESGCM(kek).encrypt(nonce, mk, container_id + bytes([kind]))


def _unwrap(kek: bytes, nonce: bytes, wrapped: bytes, container_id: bytes, kind: int) -> bytes | None:
    try:
        return AESGCM(kek).decrypt(nonce, wrapped, container_id + bytes([kind]))
    except InvalidTag:
        return None


def _key_kek(key: bytes, container_id: bytes) -> bytes:
    return hkdf(key, container_id, LABEL_RECIPIENT_KEY)


# Two Argon2id derivations with lanes > 1 running at once in one process can hang each other
# for good (cryptography 50.0.2 with its bundled OpenSSL: each waits on the other's lane
# threads), and later ones then fail with MemoryError. So one runs at a time; each still uses
# its lanes in parallel, and a KDF is meant to be the slow part anyway.
_ARGON2ID_LOCK = threading.Lock()


def _argon2id_kek(passphrase: bytes, salt: bytes, t_cost: int, m_cost_kib: int, lanes: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    kdf = Argon2id(salt=salt, length=KEY_LEN, iterations=t_cost, lanes=lanes, memory_cost=m_cost_kib)
    with _ARGON2ID_LOCK:
        return kdf.derive(passphrase)


def _pbkdf2_kek(passphrase: bytes, salt: bytes, iterations: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    return PBKDF2HMAC(_SHA256, KEY_LEN, salt, iterations).derive(passphrase)


def key_stanza(key: bytes, mk: bytes, container_id: bytes) -> tuple[int, bytes]:
    """A ``key`` stanza wrapping ``mk`` for a raw 32-byte key."""
    if len(key) != KEY_LEN:
        raise MalformedError(f"a key must be exactly {KEY_LEN} bytes, got {len(key)}")
    nonce, wrapped = _wrap(_key_kek(key, container_id), mk, container_id, KIND_KEY)
    return KIND_KEY, _KEY_BODY.pack(nonce, wrapped)


def passphrase_stanza(
    passphrase: str | bytes,
    mk: bytes,
    container_id: bytes,
    kdf: str = "argon2id",
    params: dict[str, int] | None = None,
) -> tuple[int, bytes]:
    """A passphrase stanza (``argon2id`` by default, ``pbkdf2`` on request)."""
    pw = normalize_passphrase(passphrase)
    salt = random_bytes(SALT_LEN)
    params = dict(params or {})
    if kdf == "argon2id":
        p = {**ARGON2ID_DEFAULTS, **params}
        kek = _argon2id_kek(pw, salt, p["t_cost"], p["m_cost_kib"], p["lanes"])
        nonce, wrapped = _wrap(kek, mk, container_id, KIND_ARGON2ID)
        return KIND_ARGON2ID, _ARGON2ID_BODY.pack(salt, p["t_cost"], p["m_cost_kib"], p["lanes"], nonce, wrapped)
    if kdf == "pbkdf2":
        iterations = params.get("iterations", PBKDF2_DEFAULT_ITERATIONS)
        kek = _pbkdf2_kek(pw, salt, iterations)
        nonce, wrapped = _wrap(kek, mk, container_id, KIND_PBKDF2)
        return KIND_PBKDF2, _PBKDF2_BODY.pack(salt, iterations, nonce, wrapped)
    raise MalformedError(f"unknown kdf {kdf!r}: use 'argon2id' or 'pbkdf2'")


def argon2id_params(body: bytes) -> tuple[int, int, int]:
    """``(t_cost, m_cost_kib, lanes)`` of an ``argon2id`` stanza body (FORMAT.md 3.1)."""
    _salt, t_cost, m_cost_kib, lanes, _nonce, _wrapped = _ARGON2ID_BODY.unpack(body)
    return t_cost, m_cost_kib, lanes


def unwrap_stanza(
    kind: int, body: bytes, container_id: bytes, *, key: bytes | None, passphrase: str | bytes | None
) -> bytes | None:
    """The MK if this stanza opens with the credential, else ``None``.

    KDF parameters were bounded by the Rust header parser before this runs.
    """
    if kind == KIND_KEY and key is not None:
        nonce, wrapped = _KEY_BODY.unpack(body)
        return _unwrap(_key_kek(key, container_id), nonce, wrapped, container_id, kind)
    if passphrase is None:
        return None
    pw = normalize_passphrase(passphrase)
    if kind == KIND_ARGON2ID:
        salt, t_cost, m_cost_kib, lanes, nonce, wrapped = _ARGON2ID_BODY.unpack(body)
        kek = _argon2id_kek(pw, salt, t_cost, m_cost_kib, lanes)
        return _unwrap(kek, nonce, wrapped, container_id, kind)
    if kind == KIND_PBKDF2:
        salt, iterations, nonce, wrapped = _PBKDF2_BODY.unpack(body)
        return _unwrap(_pbkdf2_kek(pw, salt, iterations), nonce, wrapped, container_id, kind)
    return None


# --- public-key recipients (FORMAT.md 3.1, kinds 4 and 5) -------------------------------

X25519_BODY_LEN: int = _core.X25519_BODY_LEN  # eph_pub, recipient_pub, nonce, wrapped MK
RSA_MIN_BITS: int = _core.RSA_MIN_BITS
RSA_MAX_BITS: int = _core.RSA_MAX_BITS
RSA_MAX_SPKI_LEN: int = _core.RSA_MAX_SPKI_LEN  # an 8192-bit key's DER SPKI is 1,062 bytes
_X25519_BODY = struct.Struct("<32s32s12s48s")


def _x25519_kek(shared: bytes, container_id: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return hkdf(shared, container_id, LABEL_RECIPIENT_X25519 + eph_pub + recipient_pub)


def check_x25519_public(public: bytes) -> bytes:
    """``public`` if it is a usable X25519 recipient key (32 bytes, not a low-order point)."""
    if len(public) != X25519_LEN:
        raise MalformedError(f"an X25519 public key is {X25519_LEN} bytes, got {len(public)}")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise MalformedError("invalid X25519 public key (a low-order point)") from None
    return bytes(public)


def x25519_stanza(recipient_pub: bytes, mk: bytes, container_id: bytes) -> tuple[int, bytes]:
    """An ``x25519`` stanza: ``mk`` sealed to ``recipient_pub`` with a fresh ephemeral key.

    ``KEK = HKDF(X25519(e, R), container_id, label || e.pub || R, 32)``; the body keeps ``R``
    so that the recipient can be listed, removed and kept across a rotation.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    check_x25519_public(recipient_pub)
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_pub))
    kek = _x25519_kek(shared, container_id, eph_pub, recipient_pub)
    nonce, wrapped = _wrap(kek, mk, container_id, KIND_X25519)
    return KIND_X25519, _X25519_BODY.pack(eph_pub, recipient_pub, nonce, wrapped)


def x25519_stanza_recipient(body: bytes) -> bytes:
    """The recipient public key stored in an ``x25519`` stanza body."""
    if len(body) != X25519_BODY_LEN:
        raise MalformedError(f"x25519 stanza body is {len(body)} bytes, expected {X25519_BODY_LEN}")
    return bytes(body[32:64])


def _rsa_label(container_id: bytes, spki: bytes) -> bytes:
    return LABEL_RECIPIENT_RSA + container_id + sha256(spki)


def _oaep(label: bytes) -> object:
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def _check_rsa_bits(bits: int) -> None:
    if bits < RSA_MIN_BITS:
        raise MalformedError(f"RSA key of {bits} bits refused: RSA recipients need at least {RSA_MIN_BITS} bits")
    if bits > RSA_MAX_BITS:
        raise MalformedError(f"RSA key of {bits} bits refused: at most {RSA_MAX_BITS} bits are supported")


def rsa_public_spki(data: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an RSA public key given as PEM or DER (>= 3072 bits)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_der_public_key,
        load_pem_public_key,
    )

    try:
        pub = load_pem_public_key(data) if data.lstrip().startswith(b"-----") else load_der_public_key(data)
    except (ValueError, TypeError):
        raise MalformedError(
            "not an RSA public key (expected a PEM 'PUBLIC KEY' or DER SubjectPublicKeyInfo)"
        ) from None
    except Exception as e:  # unsupported key types raise UnsupportedAlgorithm
        raise MalformedError(f"not a usable public key: {e}") from None
    if not isinstance(pub, RSAPublicKey):
        raise MalformedError("only RSA public keys are accepted as PEM recipients")
    _check_rsa_bits(pub.key_size)
    return pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def rsa_stanza(spki: bytes, mk: bytes, container_id: bytes) -> tuple[int, bytes]:
    """An ``rsa-oaep`` stanza: ``spki_len u16 || spki || rsa_ct`` (RSA-OAEP-SHA256 of ``mk``)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    pub = load_der_public_key(spki)
    if not isinstance(pub, RSAPublicKey):
        raise MalformedError("only RSA public keys are accepted as PEM recipients")
    _check_rsa_bits(pub.key_size)
    ct = pub.encrypt(mk, _oaep(_rsa_label(container_id, spki)))  # type: ignore[arg-type]
    return KIND_RSA_OAEP, struct.pack("<H", len(spki)) + spki + ct


def rsa_stanza_parts(body: bytes) -> tuple[bytes, bytes]:
    """``(spki, rsa_ct)`` of an ``rsa-oaep`` stanza body (structure checked)."""
    if len(body) < 2:
        raise MalformedError("rsa-oaep stanza body too short")
    (n,) = struct.unpack_from("<H", body)
    ct_len = len(body) - 2 - n
    if not 1 <= n <= RSA_MAX_SPKI_LEN or not RSA_MIN_BITS // 8 <= ct_len <= RSA_MAX_BITS // 8:
        raise MalformedError("rsa-oaep stanza has inconsistent lengths")
    return bytes(body[2 : 2 + n]), bytes(body[2 + n :])


class Identity:
    """A private key that opens public-key stanzas: X25519 (32 raw bytes) or RSA (PEM)."""

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        if len(data) == X25519_LEN:
            self.kind = KIND_X25519
            self._x25519 = data
            self.public = x25519_public(data)
            self._rsa: object = None
            return
        if b"-----BEGIN" not in data:
            raise MalformedError(
                "an identity is a 32-byte X25519 private key (qeltrix keygen --x25519) or a PEM RSA private key"
            )
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

        try:
            priv = load_pem_private_key(data, password=None)
        except TypeError:
            raise MalformedError(
                "encrypted PEM private keys are not supported: store it unencrypted with mode 0600 "
                "(openssl pkey -in KEY -out ID.pem)"
            ) from None
        except ValueError:
            raise MalformedError("the identity is not a readable PEM private key") from None
        if not isinstance(priv, RSAPrivateKey):
            raise MalformedError("a PEM identity must be an RSA private key")
        _check_rsa_bits(priv.key_size)
        self.kind = KIND_RSA_OAEP
        self._x25519 = b""
        self._rsa = priv
        self.public = priv.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def matches(self, kind: int, body: bytes) -> bool:
        """Whether the stanza names this identity's public key (no private-key operation)."""
        if kind != self.kind:
            return False
        if kind == KIND_X25519:
            return len(body) == X25519_BODY_LEN and compare_digest(body[32:64], self.public)
        try:
            spki, _ = rsa_stanza_parts(body)
        except MalformedError:
            return False
        return compare_digest(spki, self.public)

    def unwrap(self, kind: int, body: bytes, container_id: bytes) -> bytes | None:
        """The MK if this stanza is sealed to this identity and opens, else ``None``."""
        if not self.matches(kind, body):
            return None
        if kind == KIND_X25519:
            eph_pub, recipient_pub, nonce, wrapped = _X25519_BODY.unpack(body)
            try:
                shared = _dh(self._x25519, eph_pub)
            except AuthenticationError:
                return None
            return _unwrap(
                _x25519_kek(shared, container_id, eph_pub, recipient_pub), nonce, wrapped, container_id, kind
            )
        spki, ct = rsa_stanza_parts(body)
        try:
            mk: bytes = self._rsa.decrypt(ct, _oaep(_rsa_label(container_id, spki)))  # type: ignore[attr-defined]
        except ValueError:
            return None
        return mk if len(mk) == MK_LEN else None


def rsa_generate_pem(bits: int = 3072) -> tuple[bytes, bytes]:
    """A new RSA key pair as ``(private PKCS#8 PEM, public SPKI PEM)`` (for keygen and tests)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    _check_rsa_bits(bits)
    priv = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return (
        priv.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        priv.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    )


# --- container keys (FORMAT.md 4, 5, 6) -------------------------------------------------


class ContainerKeys:
    """Keys of one container, derived from its MK; the object the Rust core calls per block.

    Buffers passed in are memoryviews of buffers owned by Rust worker threads (their size is
    fixed while Python holds them); this class only slices them, so each block costs no copy
    beyond the AEAD itself. The methods and their argument order are the contract of
    ``rust/qeltrix-py/src/calls.rs`` (see :mod:`qeltrix_v6._contract`).
    """

    __slots__ = (
        "_aead_cls",
        "_cdk_info",
        "_index_aead",
        "_meta_aead",
        "_mk",
        "cipher_id",
        "container_id",
        "k_header",
        "k_perm",
    )

    def __init__(self, mk: bytes, container_id: bytes, cipher_id: int) -> None:
        if cipher_id not in _AEADS:
            raise MalformedError(f"unknown cipher_id {cipher_id}")
        self._mk = mk
        self.container_id = container_id
        self.cipher_id = cipher_id
        self._aead_cls = _AEADS[cipher_id]
        self.k_header = hkdf(mk, container_id, LABEL_HEADER_MAC)
        self.k_perm = hkdf(mk, container_id, LABEL_PERM, 16)
        self._meta_aead: Aead = self._aead_cls(hkdf(mk, container_id, LABEL_META))
        self._index_aead: Aead = self._aead_cls(hkdf(mk, container_id, LABEL_INDEX))
        # The constant start of every CDK_i's HKDF info (FORMAT.md section 4).
        self._cdk_info = LABEL_CDK + container_id

    @property
    def mk(self) -> bytes:
        """The master key (for rewriting recipients; never log or store it unwrapped)."""
        return self._mk

    def header_mac(self, maced: bytes) -> bytes:
        """``header_mac`` over the header bytes before it."""
        return hmac_sha256(self.k_header, maced)

    def verify_header_mac(self, maced: bytes, tag: bytes) -> None:
        """Raise :class:`AuthenticationError` unless ``tag`` is the header's MAC."""
        if not compare_digest(self.header_mac(maced), tag):
            raise AuthenticationError("container header failed authentication (corrupt or tampered)")

    def _cdk(self, cdk_salt: bytes, block_index: int, pt_sha256: bytes) -> bytes:
        return hkdf(self._mk, cdk_salt, self._cdk_info + block_index.to_bytes(8, "little") + pt_sha256)

    def _data_aad(self, block_index: int, pt_len: int, meta_flags: int) -> bytes:
        return self.container_id + _DATA_AAD.pack(block_index, pt_len, meta_flags)

    def open_meta(self, inbuf: memoryview) -> bytes:
        """Decrypt the V6-C metadata at the start of a frame; return ``meta_pt``."""
        frame = memoryview(inbuf)
        try:
            return self._meta_aead.decrypt(bytes(frame[:NONCE_LEN]), frame[NONCE_LEN:META_FRAME_LEN], self.container_id)
        except InvalidTag:
            raise AuthenticationError("block metadata failed authentication (corrupt or tampered)") from None

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
    ) -> None:
        """Decrypt a frame's ``data_ct`` into ``outbuf[:pt_len]`` and check its SHA-256."""
        ct = memoryview(inbuf)[META_FRAME_LEN : META_FRAME_LEN + pt_len + TAG_LEN]
        out = memoryview(outbuf)[:pt_len]
        cdk = self._cdk(cdk_salt, block_index, pt_sha256)
        try:
            self._aead_cls(cdk).decrypt_into(data_nonce, ct, self._data_aad(block_index, pt_len, meta_flags), out)
        except InvalidTag:
            raise AuthenticationError(f"block {block_index} failed authentication (corrupt or tampered)") from None
        if not compare_digest(sha256(out), pt_sha256):
            raise AuthenticationError(f"block {block_index} failed its integrity hash")

    # --- stream frames: one call per frame for the pack pipeline. It inlines what _cdk,
    # _data_aad and sha256 do (same bytes, fewer Python frames). The gateway seals and opens its
    # frames with the same `cryptography` calls made from Rust (frame_calls, FrameCalls).

    def seal_stream_frame(
        self, block_index: int, meta_flags: int, inbuf: memoryview, pt_len: int, outbuf: memoryview
    ) -> None:
        """Seal ``inbuf[:pt_len]`` as the whole frame ``block_index`` into ``outbuf[:frame_len]``:
        ``data_ct`` under its CDK, then ``meta_nonce || meta_ct`` (FORMAT.md section 5). One call
        per frame (one GIL acquisition) for the pack pipeline."""
        pt = memoryview(inbuf)[:pt_len]
        h = _SHA256_CTX.copy()
        h.update(pt)
        pt_sha256 = h.finalize()
        rnd = _frame_random()
        cdk_salt = rnd[:SALT_LEN]
        data_nonce = rnd[SALT_LEN:_META_NONCE_AT]
        meta_nonce = rnd[_META_NONCE_AT:]
        # u64le(i) || u32le(pt_len) || u8(meta_flags): the data AAD's tail, whose first 8 bytes
        # are the u64le(i) of the CDK's info.
        tail = _DATA_AAD.pack(block_index, pt_len, meta_flags)
        cdk = HKDF(_SHA256, KEY_LEN, cdk_salt, self._cdk_info + tail[:8] + pt_sha256).derive(self._mk)
        out = memoryview(outbuf)
        cid = self.container_id
        self._aead_cls(cdk).encrypt_into(
            data_nonce, pt, cid + tail, out[META_FRAME_LEN : META_FRAME_LEN + pt_len + TAG_LEN]
        )
        out[:NONCE_LEN] = meta_nonce
        self._meta_aead.encrypt_into(
            meta_nonce,
            _META_PT.pack(block_index, pt_len, meta_flags, cdk_salt, data_nonce, pt_sha256),
            cid,
            out[NONCE_LEN:META_FRAME_LEN],
        )

    def frame_calls(self) -> FrameCalls:
        """What the gateway core calls to seal and open this stream's frames itself."""
        return FrameCalls(self)

    # --- end of the stream-frame block ---

    def frame_digest(self, inbuf: memoryview) -> bytes:
        """``frame_digest = SHA256(meta_nonce || meta_ct)``: the first ``META_FRAME_LEN`` bytes of
        the frame in ``inbuf`` (FORMAT.md section 15; they commit to the whole block)."""
        return sha256(memoryview(inbuf)[:META_FRAME_LEN])

    def sha256(self, data: bytes) -> bytes:
        """``SHA256(data)`` (the header, footer and digest-list hashes of section 15)."""
        return sha256(data)

    def _index_aad(self, footer_offset: int, footer_len: int) -> bytes:
        return self.container_id + struct.pack("<QQ", footer_offset, footer_len)

    def seal_index(self, index_pt: bytes, footer_offset: int) -> bytes:
        """The footer: ``footer_nonce || Seal(K_index, index_pt)``."""
        footer_len = NONCE_LEN + len(index_pt) + TAG_LEN
        nonce = random_bytes(NONCE_LEN)
        return nonce + self._index_aead.encrypt(nonce, index_pt, self._index_aad(footer_offset, footer_len))

    def open_index(self, footer: bytes, footer_offset: int) -> bytes:
        """Decrypt the footer; return ``index_pt``."""
        try:
            return self._index_aead.decrypt(
                footer[:NONCE_LEN], footer[NONCE_LEN:], self._index_aad(footer_offset, len(footer))
            )
        except InvalidTag:
            raise AuthenticationError("container index failed authentication (corrupt or tampered)") from None


class FrameCalls:
    """The ``cryptography`` objects a gateway's Rust core calls to seal and open one stream's
    frames (issue 12; ``rust/qeltrix-py/src/framecrypto.rs``).

    A frame costs the same calls on the same bytes as :meth:`ContainerKeys.seal_stream_frame`
    (FORMAT.md sections 4-5): ``hash.copy()``, ``update``, ``finalize`` for ``pt_sha256``;
    ``hkdf(sha256, 32, cdk_salt, cdk_info || u64le(i) || pt_sha256).derive(mk)`` for
    ``CDK_i``; ``aead(CDK_i).encrypt_into`` for ``data_ct``; ``meta_aead.encrypt_into`` for
    ``meta_ct``; and, every 64 frames, ``urandom`` for the frames' random fields. Made from
    Rust, a frame runs no Python code of ours: on interactive traffic, a frame per message,
    that per-frame overhead is most of what a gateway pair adds.
    """

    __slots__ = ("aead", "cdk_info", "container_id", "meta_aead", "mk")

    # The same for every stream.
    hkdf = HKDF
    sha256 = _SHA256
    hash = _SHA256_CTX
    urandom = staticmethod(os.urandom)
    invalid_tag = InvalidTag

    def __init__(self, keys: ContainerKeys) -> None:
        self.mk: bytes = keys.mk
        self.cdk_info: bytes = keys._cdk_info
        self.container_id: bytes = keys.container_id
        self.aead: type[AESGCM] | type[ChaCha20Poly1305] = keys._aead_cls
        self.meta_aead: Aead = keys._meta_aead


# --- signatures (FORMAT.md section 15) ---------------------------------------------------

ED25519_LEN: int = _core.SIGNER_PUB_LEN
ED25519_SIG_LEN: int = _core.SIGNATURE_LEN


class Ed25519Signer:
    """An Ed25519 signing key (RFC 8032, pure Ed25519): the object the Rust pack pipeline calls.

    ``private`` is a PKCS#8 PEM private key (``qeltrix keygen --ed25519``, ``openssl genpkey
    -algorithm ed25519``) or the raw 32-byte seed.
    """

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

        data = bytes(private)
        if len(data) == ED25519_LEN:
            key = Ed25519PrivateKey.from_private_bytes(data)
        elif b"-----BEGIN" in data:
            try:
                loaded = load_pem_private_key(data, password=None)
            except TypeError:
                raise MalformedError(
                    "encrypted PEM signing keys are not supported: store it unencrypted, mode 0600"
                ) from None
            except ValueError:
                raise MalformedError("the signing key is not a readable PEM private key") from None
            if not isinstance(loaded, Ed25519PrivateKey):
                raise MalformedError("a signing key must be an Ed25519 private key (qeltrix keygen --ed25519)")
            key = loaded
        else:
            raise MalformedError("a signing key is a PEM Ed25519 private key (qeltrix keygen --ed25519)")
        self._key = key
        self.public: bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        """``Ed25519-Sign(signer_priv, message)`` (64 bytes)."""
        return self._key.sign(bytes(message))


def ed25519_generate() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: ``(PKCS#8 PEM private key, raw 32-byte public key)``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    priv = Ed25519PrivateKey.generate()
    return (
        priv.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(public) != ED25519_LEN or len(signature) != ED25519_SIG_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- gateway handshake (FORMAT.md section 12.1) ------------------------------------------

HS_MAGIC: bytes = _core.HS_MAGIC
LABEL_HANDSHAKE = b"qeltrix-v6 handshake"
LABEL_HANDSHAKE_STREAM = b"qeltrix-v6 handshake stream"
HS_MSG1_LEN: int = _core.HS_MSG1_LEN
HS_MSG2_LEN: int = _core.HS_MSG2_LEN
HS_MSG3_LEN: int = _core.HS_MSG3_LEN
X25519_LEN: int = _core.X25519_LEN
# FORMAT.md section 12.2: every stream MK is bound to its direction.
DIRECTION_REQUEST = 1
DIRECTION_REPLY = 2
SK_MAGIC: bytes = _core.SK_MAGIC
LABEL_SHARED_KEY_CHECK = b"qeltrix-v6 shared-key check"
LABEL_SHARED_KEY_SESSION = b"qeltrix-v6 shared-key session"
SK_NONCE_LEN: int = _core.SK_NONCE_LEN
SK_MSG1_LEN: int = _core.SK_MSG1_LEN
SK_MSG2_LEN: int = _core.SK_MSG2_LEN


def stream_mk(session: bytes, container_id: bytes, direction: int) -> bytes:
    """The MK of a gateway stream (FORMAT.md section 12.2)."""
    if not session:
        raise AuthenticationError("no completed handshake")
    return hkdf(session, container_id, LABEL_HANDSHAKE_STREAM + bytes([direction]))


def shared_key_check(key: bytes, nonce_i: bytes) -> bytes:
    """``key_check`` of a shared-key ``msg1`` (a wrong-key diagnostic, not authentication)."""
    return hkdf(key, nonce_i, LABEL_SHARED_KEY_CHECK)


def shared_key_session(key: bytes, nonce_i: bytes, nonce_r: bytes) -> bytes:
    """The ``session`` of a shared-key connection (FORMAT.md section 12.2)."""
    return hkdf(key, nonce_i + nonce_r, LABEL_SHARED_KEY_SESSION)


class _Session:
    """What both session kinds share: the role and the direction-bound stream MKs."""

    msg_lens: tuple[int, int, int] = (0, 0, 0)

    def __init__(self) -> None:
        self.initiator = False
        self.secret = b""

    def send_mk(self, container_id: bytes) -> bytes:
        """The MK of a stream this side sends: a request from the initiator, else a reply."""
        return stream_mk(self.secret, container_id, DIRECTION_REQUEST if self.initiator else DIRECTION_REPLY)

    def recv_mk(self, container_id: bytes) -> bytes:
        """The MK of a stream this side receives (the other direction)."""
        return stream_mk(self.secret, container_id, DIRECTION_REPLY if self.initiator else DIRECTION_REQUEST)


class SharedKeySession(_Session):
    """The shared-key session between gateways (FORMAT.md section 12.2): both sides send a
    fresh nonce, so a recorded stream never authenticates on another connection.

    >>> k = bytes(32)
    >>> i, r = SharedKeySession(k), SharedKeySession(k)
    >>> i.finish(r.respond(i.start()))
    b''
    >>> i.send_mk(b"c" * 16) == r.recv_mk(b"c" * 16) != r.send_mk(b"c" * 16)
    True
    """

    msg_lens = (SK_MSG1_LEN, SK_MSG2_LEN, 0)

    def __init__(self, key: bytes, nonce: bytes | None = None, also_accept: tuple[bytes, ...] = ()) -> None:
        super().__init__()
        self._key = key
        # A responder also accepts initiators using these keys (a key rotation in progress).
        self._also_accept = also_accept
        # ``nonce`` only for test vectors: a live session always draws a fresh one.
        self._nonce = nonce if nonce is not None else random_bytes(SK_NONCE_LEN)

    def start(self) -> bytes:
        """Initiator: message 1."""
        self.initiator = True
        return SK_MAGIC + self._nonce + shared_key_check(self._key, self._nonce)

    def respond(self, msg1: bytes) -> bytes:
        """Responder: check message 1; return message 2 (its nonce)."""
        if len(msg1) != SK_MSG1_LEN or msg1[:8] != SK_MAGIC:
            raise MalformedError("not a Qeltrix shared-key gateway session")
        nonce_i = msg1[8:40]
        for key in (self._key, *self._also_accept):
            if compare_digest(shared_key_check(key, nonce_i), msg1[40:]):
                self._key = key
                break
        else:
            raise WrongKeyError("the peer gateway uses another shared key")
        self.secret = shared_key_session(self._key, nonce_i, self._nonce)
        return self._nonce

    def finish(self, msg2: bytes) -> bytes:
        """Initiator: take the responder's nonce (no third message)."""
        if len(msg2) != SK_MSG2_LEN:
            raise MalformedError("bad shared-key session reply")
        self.secret = shared_key_session(self._key, self._nonce, msg2)
        return b""

    def confirm(self, msg3: bytes) -> None:
        """Not used: the first stream header's MAC authenticates the initiator."""
        raise MalformedError("a shared-key session has no third message")


def x25519_generate() -> tuple[bytes, bytes]:
    """A new X25519 key pair ``(private, public)`` as raw 32-byte strings."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    priv = X25519PrivateKey.generate()
    return (
        priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )


def x25519_public(private: bytes) -> bytes:
    """The public key of a raw X25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: bytes, public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # An all-zero shared secret (a low-order point): a hostile peer.
        raise AuthenticationError("handshake failed: invalid peer key") from None


class Handshake(_Session):
    """The authenticated X25519 handshake between gateways (FORMAT.md section 12.1).

    Three messages: the initiator sends its ephemeral and static keys; the responder checks the
    static key is pinned, answers with its own and a confirmation tag; the initiator checks the
    responder is pinned and the tag, and confirms. Both then share a 32-byte ``secret`` with
    forward secrecy (the ephemeral-ephemeral DH) and mutual authentication (each static key
    enters a DH with the other side's ephemeral).
    """

    msg_lens = (HS_MSG1_LEN, HS_MSG2_LEN, HS_MSG3_LEN)

    def __init__(self, static_private: bytes, pinned: frozenset[bytes]) -> None:
        super().__init__()
        self._s = static_private
        self._s_pub = x25519_public(static_private)
        self._pinned = pinned
        self._e, self._e_pub = x25519_generate()
        self._peer_e = b""
        self._msg1 = b""
        self._th = b""
        self._k_i = b""
        self.peer_static = b""

    def _keys(self, dh1: bytes, dh2: bytes, dh3: bytes, transcript: bytes) -> tuple[bytes, bytes]:
        self._th = sha256(transcript)
        okm = HKDF(hashes.SHA256(), 96, self._th, LABEL_HANDSHAKE).derive(dh1 + dh2 + dh3)
        self.secret = okm[64:]
        return okm[:32], okm[32:64]

    def start(self) -> bytes:
        """Initiator: message 1."""
        self.initiator = True
        self._msg1 = HS_MAGIC + self._e_pub + self._s_pub
        return self._msg1

    def respond(self, msg1: bytes) -> bytes:
        """Responder: check message 1's static key is pinned; return message 2."""
        if len(msg1) != HS_MSG1_LEN or msg1[:8] != HS_MAGIC:
            raise MalformedError("not a Qeltrix gateway handshake")
        e_i, s_i = msg1[8:40], msg1[40:72]
        if s_i not in self._pinned:
            raise WrongKeyError("the peer's public key is not pinned")
        self.peer_static = s_i
        k_r, self._k_i = self._keys(
            _dh(self._e, e_i), _dh(self._e, s_i), _dh(self._s, e_i), msg1 + self._e_pub + self._s_pub
        )
        return self._e_pub + self._s_pub + hmac_sha256(k_r, self._th)

    def finish(self, msg2: bytes) -> bytes:
        """Initiator: check the responder is pinned and its tag; return message 3."""
        e_r, s_r, tag_r = msg2[:32], msg2[32:64], msg2[64:96]
        if s_r not in self._pinned:
            raise WrongKeyError("the peer's public key is not pinned")
        self.peer_static = s_r
        k_r, k_i = self._keys(_dh(self._e, e_r), _dh(self._s, e_r), _dh(self._e, s_r), self._msg1 + e_r + s_r)
        if not compare_digest(hmac_sha256(k_r, self._th), tag_r):
            self.secret = b""
            raise AuthenticationError("handshake failed: the responder could not prove its key")
        return hmac_sha256(k_i, self._th)

    def confirm(self, msg3: bytes) -> None:
        """Responder: check the initiator's tag."""
        if not compare_digest(hmac_sha256(self._k_i, self._th), msg3):
            self.secret = b""
            raise AuthenticationError("handshake failed: the initiator could not prove its key")
