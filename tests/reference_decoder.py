"""Independent reference implementation of the Qeltrix V6 container format.

This module is written from ``docs/FORMAT.md`` only (format version 1). It does not import or
copy anything from the product code in ``python/qeltrix_v6`` or ``rust/``. It is deliberately
slow and simple: the whole container is held in memory, and every reader check of FORMAT.md
section 8 is made in the order the spec lists them.

Public API:

- ``decode(container, *, key=None, passphrase=None, signers=None) -> bytes``; ``signers`` (raw
  32-byte Ed25519 public keys) makes the signed-container checks S1-S3 of section 8
- ``encode(plaintext, *, key=None, passphrase=None, kdf="argon2id", kdf_params=None,
  cipher_id=1, block_size=262144, permute=True, perm_window=None, rng=os.urandom,
  sign_with=None) -> bytes``; ``sign_with`` (a 32-byte Ed25519 seed) signs it (section 15)
- ``check_signature(container, info) -> dict``: section 15.2 for a signed container
- ``inspect(container, *, key=None, passphrase=None) -> dict``: steps 1-6 of section 8, returns
  the parsed header, trailer and index (used by the vector generator and the tests).
- ``parse_header(container) -> dict``: steps 1-2 of section 8 (no credential needed).
- ``siphash24(key16, data) -> int`` and ``perm(k_perm, w, k, j) -> int`` (section 7).
- Errors: ``RefError`` and its subclasses ``RefMalformed``, ``RefCorrupt``, ``RefWrongKey``,
  ``RefTruncated``; each has a ``kind`` attribute equal to the vector ``expect`` string.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import unicodedata
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# --------------------------------------------------------------------------------------------
# Errors


class RefError(Exception):
    """Base class of every error raised by the reference decoder."""

    kind = "error"


class RefMalformed(RefError):
    """The input is not a well-formed V6 container (section 8, steps 1-3)."""

    kind = "malformed"


class RefCorrupt(RefError):
    """Checksum, MAC, AEAD or consistency failure (section 8, steps 2 and 4-7)."""

    kind = "corrupt"


class RefWrongKey(RefError):
    """No recipient stanza opens with the given credential (section 8, step 3)."""

    kind = "wrong_key"


class RefSignature(RefCorrupt):
    """A required signer's signature is missing, from another key, or does not match (section 15)."""

    kind = "signature"


class RefTruncated(RefError):
    """The trailer magic is missing (section 8, step 5)."""

    kind = "truncated"


# --------------------------------------------------------------------------------------------
# Constants (sections 3, 5, 6 and 9)

MAGIC = b"QLTXV6\r\n"
TRAILER_MAGIC = b"QLTXEND\n"
FORMAT_VERSION = 1

HEADER_FIXED_LEN = 44
HEADER_TAIL_LEN = 64  # header_sha256 || header_mac
HEADER_ALIGN = 4096
FLAG_PERMUTED = 0x0001
FLAG_SIGNED = 0x0002
FLAG_ARCHIVE = 0x0004  # section 16
SIG_LABEL = b"qeltrix-v6 signature\x00"
SIG_FIXED_LEN = 96  # signer_pub (32) + signature (64)

CIPHER_AES_256_GCM = 1
CIPHER_CHACHA20_POLY1305 = 2

KIND_KEY = 1
KIND_ARGON2ID = 2
KIND_PBKDF2 = 3
STANZA_BODY_LEN = {KIND_KEY: 60, KIND_ARGON2ID: 88, KIND_PBKDF2: 80}
WRAPPED_MK_LEN = 48

TAG_LEN = 16
NONCE_LEN = 12
META_PT_LEN = 76
META_FRAME_LEN = NONCE_LEN + META_PT_LEN + TAG_LEN  # 104
META_FLAG_FINAL = 0x01
INDEX_FLAG_INCOMPLETE = 0x00000001
INDEX_HEADER_LEN = 20
INDEX_ENTRY_LEN = 12
FOOTER_MIN_LEN = NONCE_LEN + TAG_LEN + INDEX_HEADER_LEN  # 48
TRAILER_LEN = 24

MIN_BLOCK_SIZE = 16
MAX_BLOCK_SIZE = 64 * 1024 * 1024
MAX_HEADER_LEN = 1024 * 1024
MAX_RECIPIENTS = 64
MAX_STANZA_BODY_LEN = 4096
MAX_BLOCK_COUNT = 2**32
ARGON2_T_RANGE = (1, 16)
ARGON2_M_MAX_KIB = 1024 * 1024
ARGON2_LANES_RANGE = (1, 16)
ARGON2_MAX_WORK_KIB = 2 * 1024 * 1024  # t_cost * m_cost_kib
MAX_PASSPHRASE_STANZAS = 1
PBKDF2_ITER_RANGE = (1_000, 10_000_000)

DEFAULT_BLOCK_SIZE = 262144
DEFAULT_ARGON2 = {"t_cost": 3, "m_cost_kib": 65536, "lanes": 4}
DEFAULT_PBKDF2 = {"iterations": 600_000}

INFO_RECIPIENT_KEY = b"qeltrix-v6 recipient key"
INFO_HEADER_MAC = b"qeltrix-v6 header mac"
INFO_META = b"qeltrix-v6 v6-c metadata"
INFO_INDEX = b"qeltrix-v6 index"
INFO_PERM = b"qeltrix-v6 permutation"
INFO_CDK = b"qeltrix-v6 cdk"

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Little-endian helpers


def u8(x: int) -> bytes:
    return struct.pack("<B", x)


def u16(x: int) -> bytes:
    return struct.pack("<H", x)


def u32(x: int) -> bytes:
    return struct.pack("<I", x)


def u64le(x: int) -> bytes:
    return struct.pack("<Q", x)


# --------------------------------------------------------------------------------------------
# Primitives (section 1)


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    h = _hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hmac_verify(key: bytes, data: bytes, tag: bytes) -> bool:
    h = _hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    try:
        h.verify(tag)
    except InvalidSignature:
        return False
    return True


def _aead(cipher_id: int, key: bytes):
    if cipher_id == CIPHER_AES_256_GCM:
        return AESGCM(key)
    if cipher_id == CIPHER_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher_id {cipher_id}")


def seal(cipher_id: int, key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    return _aead(cipher_id, key).encrypt(nonce, pt, aad)


def open_(cipher_id: int, key: bytes, nonce: bytes, ct: bytes, aad: bytes) -> bytes | None:
    """AEAD-Open; returns None when authentication fails."""
    try:
        return _aead(cipher_id, key).decrypt(nonce, ct, aad)
    except InvalidTag:
        return None


def normalize_passphrase(passphrase: str) -> bytes:
    """Section 3.1: NFC, then UTF-8."""
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


# --------------------------------------------------------------------------------------------
# SipHash-2-4 and the placement permutation (section 7)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


def siphash24(key16: bytes, data: bytes) -> int:
    """SipHash-2-4 (Aumasson & Bernstein) with a 16-byte key; returns a 64-bit integer."""
    if len(key16) != 16:
        raise ValueError("SipHash key must be 16 bytes")
    k0, k1 = struct.unpack("<QQ", key16)
    v = [
        k0 ^ 0x736F6D6570736575,
        k1 ^ 0x646F72616E646F6D,
        k0 ^ 0x6C7967656E657261,
        k1 ^ 0x7465646279746573,
    ]

    def sipround() -> None:
        v[0] = (v[0] + v[1]) & _MASK64
        v[1] = _rotl(v[1], 13)
        v[1] ^= v[0]
        v[0] = _rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & _MASK64
        v[3] = _rotl(v[3], 16)
        v[3] ^= v[2]
        v[0] = (v[0] + v[3]) & _MASK64
        v[3] = _rotl(v[3], 21)
        v[3] ^= v[0]
        v[2] = (v[2] + v[1]) & _MASK64
        v[1] = _rotl(v[1], 17)
        v[1] ^= v[2]
        v[2] = _rotl(v[2], 32)

    n = len(data)
    full = n - (n % 8)
    words = [struct.unpack_from("<Q", data, i)[0] for i in range(0, full, 8)]
    tail = data[full:] + bytes(7 - (n % 8))
    words.append(int.from_bytes(tail, "little") | ((n & 0xFF) << 56))
    for m in words:
        v[3] ^= m
        sipround()
        sipround()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        sipround()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


FEISTEL_ROUNDS = 6  # "for r in 0..6" read as the half-open range 0, 1, ..., 5


def perm(k_perm: bytes, w: int, k: int, j: int) -> int:
    """P(K_perm, w, k, j): keyed permutation of [0, k) (Feistel + cycle-walking)."""
    if k < 1 or not 0 <= j < k:
        raise ValueError("need 0 <= j < k")
    h = max(1, math.ceil((k - 1).bit_length() / 2))
    mask = (1 << h) - 1

    def f(r: int, x: int) -> int:
        return siphash24(k_perm, u64le(w) + u8(r) + u64le(x)) & mask

    def e(x: int) -> int:
        left, right = x >> h, x & mask
        for r in range(FEISTEL_ROUNDS):
            left, right = right, left ^ f(r, right)
        return (left << h) | right

    x = e(j)
    while x >= k:
        x = e(x)
    return x


def default_perm_window(block_size: int) -> int:
    return max(1, min(64, (64 * 1024 * 1024) // block_size))


def physical_order(k_perm: bytes, block_count: int, perm_window: int) -> list[int]:
    """Returns slots: slots[s] = logical block stored at physical slot s (section 7)."""
    slots = [-1] * block_count
    for start in range(0, block_count, perm_window):
        w = start // perm_window
        k = min(perm_window, block_count - start)
        for j in range(k):
            slots[start + perm(k_perm, w, k, j)] = start + j
    assert sorted(slots) == list(range(block_count))
    return slots


# --------------------------------------------------------------------------------------------
# Keys (sections 3.1 and 4)


def derive_keys(mk: bytes, container_id: bytes) -> dict[str, bytes]:
    return {
        "header": hkdf(mk, container_id, INFO_HEADER_MAC, 32),
        "meta": hkdf(mk, container_id, INFO_META, 32),
        "index": hkdf(mk, container_id, INFO_INDEX, 32),
        "perm": hkdf(mk, container_id, INFO_PERM, 16),
    }


def derive_cdk(mk: bytes, container_id: bytes, i: int, pt_sha: bytes, cdk_salt: bytes) -> bytes:
    return hkdf(mk, cdk_salt, INFO_CDK + container_id + u64le(i) + pt_sha, 32)


def kek_key(file_key: bytes, container_id: bytes) -> bytes:
    return hkdf(file_key, container_id, INFO_RECIPIENT_KEY, 32)


def kek_argon2id(pw: bytes, salt: bytes, t_cost: int, m_cost_kib: int, lanes: int) -> bytes:
    kdf = Argon2id(salt=salt, length=32, iterations=t_cost, lanes=lanes, memory_cost=m_cost_kib)
    return kdf.derive(pw)


def kek_pbkdf2(pw: bytes, salt: bytes, iterations: int) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations)
    return kdf.derive(pw)


def argon2_params_ok(t_cost: int, m_cost_kib: int, lanes: int) -> bool:
    return (
        ARGON2_T_RANGE[0] <= t_cost <= ARGON2_T_RANGE[1]
        and ARGON2_LANES_RANGE[0] <= lanes <= ARGON2_LANES_RANGE[1]
        and 8 * lanes <= m_cost_kib <= ARGON2_M_MAX_KIB
        and t_cost * m_cost_kib <= ARGON2_MAX_WORK_KIB
    )


def pbkdf2_params_ok(iterations: int) -> bool:
    return PBKDF2_ITER_RANGE[0] <= iterations <= PBKDF2_ITER_RANGE[1]


# --------------------------------------------------------------------------------------------
# Reader (section 8)


def parse_header(container: bytes) -> dict:
    """Steps 1 and 2 of section 8. Needs no credential."""
    c = container
    # Step 1.
    if len(c) < HEADER_FIXED_LEN or c[:8] != MAGIC:
        raise RefMalformed("not a Qeltrix V6 container (magic)")
    (version, header_len, flags, cipher_id, reserved, block_size, perm_window) = struct.unpack_from("<HIHBBII", c, 8)
    if version != FORMAT_VERSION:
        raise RefMalformed(f"unsupported format_version {version}")
    container_id = c[26:42]
    (recipient_count,) = struct.unpack_from("<H", c, 42)

    # Step 2: header_len, fixed fields, stanzas, padding (malformed); then header_sha256.
    if not HEADER_FIXED_LEN + HEADER_TAIL_LEN <= header_len <= MAX_HEADER_LEN:
        raise RefMalformed(f"header_len {header_len} out of range")
    if header_len > len(c):
        raise RefTruncated("header_len larger than the file")
    if flags & ~(FLAG_PERMUTED | FLAG_SIGNED | FLAG_ARCHIVE):
        raise RefMalformed(f"unknown header_flags bits {flags:#06x}")
    if cipher_id not in (CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305):
        raise RefMalformed(f"unknown cipher_id {cipher_id}")
    if reserved != 0:
        raise RefMalformed("reserved header byte is not zero")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise RefMalformed(f"block_size {block_size} out of range")
    if flags & FLAG_PERMUTED:
        if perm_window < 1:
            raise RefMalformed("PERMUTED is set but perm_window is 0")
    elif perm_window != 0:
        raise RefMalformed("perm_window must be 0 when PERMUTED is clear")
    if recipient_count > MAX_RECIPIENTS:
        raise RefMalformed(f"recipient_count {recipient_count} > {MAX_RECIPIENTS}")
    if recipient_count == 0:
        raise RefMalformed("recipient_count is 0")

    stanza_end = header_len - HEADER_TAIL_LEN
    pos = HEADER_FIXED_LEN
    stanzas = []
    for _ in range(recipient_count):
        if pos + 3 > stanza_end:
            raise RefMalformed("stanza header runs past the stanza area")
        kind = c[pos]
        if kind == 0:
            raise RefMalformed("stanza kind 0 is reserved")
        (body_len,) = struct.unpack_from("<H", c, pos + 1)
        if body_len > MAX_STANZA_BODY_LEN:
            raise RefMalformed(f"stanza body_len {body_len} > {MAX_STANZA_BODY_LEN}")
        if kind in STANZA_BODY_LEN and body_len != STANZA_BODY_LEN[kind]:
            raise RefMalformed(f"stanza kind {kind} has body_len {body_len}")
        if pos + 3 + body_len > stanza_end:
            raise RefMalformed("stanza body runs past the stanza area")
        stanzas.append((kind, c[pos + 3 : pos + 3 + body_len]))
        pos += 3 + body_len
    if sum(1 for kind, _ in stanzas if kind in (KIND_ARGON2ID, KIND_PBKDF2)) > MAX_PASSPHRASE_STANZAS:
        raise RefMalformed("more than one passphrase stanza")
    if any(c[pos:stanza_end]):
        raise RefCorrupt("header padding is not all zero")

    header_sha = c[stanza_end : stanza_end + 32]
    header_mac = c[stanza_end + 32 : header_len]
    if sha256(c[:stanza_end]) != header_sha:
        raise RefCorrupt("header_sha256 mismatch")

    return {
        "format_version": version,
        "header_len": header_len,
        "header_flags": flags,
        "cipher_id": cipher_id,
        "block_size": block_size,
        "perm_window": perm_window,
        "container_id": container_id,
        "recipient_count": recipient_count,
        "stanzas": stanzas,
        "stanza_area_end": pos,
        "header_sha256": header_sha,
        "header_mac": header_mac,
    }


def _unwrap(kek: bytes, body: bytes, container_id: bytes, kind: int) -> bytes | None:
    nonce, wrapped = body[-60:-48], body[-48:]
    mk = open_(CIPHER_AES_256_GCM, kek, nonce, wrapped, container_id + u8(kind))
    if mk is not None and len(mk) != 32:
        return None
    return mk


def open_master_key(hdr: dict, key: bytes | None, passphrase: str | None) -> bytes:
    """Step 3 of section 8: try every stanza of the credential's kind, in header order."""
    cid = hdr["container_id"]
    pw = normalize_passphrase(passphrase) if passphrase is not None else None
    for kind, body in hdr["stanzas"]:
        if kind == KIND_KEY and key is not None:
            mk = _unwrap(kek_key(key, cid), body, cid, kind)
        elif kind == KIND_ARGON2ID and pw is not None:
            salt = body[:16]
            t_cost, m_cost, lanes = struct.unpack_from("<III", body, 16)
            if not argon2_params_ok(t_cost, m_cost, lanes):
                raise RefMalformed(f"Argon2id parameters out of range: {t_cost}, {m_cost}, {lanes}")
            mk = _unwrap(kek_argon2id(pw, salt, t_cost, m_cost, lanes), body, cid, kind)
        elif kind == KIND_PBKDF2 and pw is not None:
            salt = body[:16]
            (iterations,) = struct.unpack_from("<I", body, 16)
            if not pbkdf2_params_ok(iterations):
                raise RefMalformed(f"PBKDF2 iterations out of range: {iterations}")
            mk = _unwrap(kek_pbkdf2(pw, salt, iterations), body, cid, kind)
        else:
            continue  # another credential's kind, or a kind this reader does not know
        if mk is not None:
            return mk
    raise RefWrongKey("no recipient stanza opens with this credential")


def inspect(container: bytes, *, key: bytes | None = None, passphrase: str | None = None) -> dict:
    """Steps 1-6 of section 8. Returns header, trailer and index fields (and the keys)."""
    _check_credentials(key, passphrase)
    c = container
    hdr = parse_header(c)  # steps 1-2
    cid = hdr["container_id"]
    header_len = hdr["header_len"]
    cipher_id = hdr["cipher_id"]

    mk = open_master_key(hdr, key, passphrase)  # step 3
    keys = derive_keys(mk, cid)

    # Step 4.
    mac_start = header_len - 32
    if not _hmac_verify(keys["header"], c[:mac_start], c[mac_start:header_len]):
        raise RefCorrupt("header_mac does not verify")

    # Step 5.
    if len(c) < TRAILER_LEN or c[-8:] != TRAILER_MAGIC:
        raise RefTruncated("trailer magic missing")
    footer_offset, footer_len = struct.unpack_from("<QQ", c, len(c) - TRAILER_LEN)
    if header_len > footer_offset:
        raise RefCorrupt("footer_offset inside the header")
    if footer_len < FOOTER_MIN_LEN or (footer_len - FOOTER_MIN_LEN) % INDEX_ENTRY_LEN:
        raise RefCorrupt(f"bad footer_len {footer_len}")
    signed = bool(hdr["header_flags"] & FLAG_SIGNED)
    sig_len = SIG_FIXED_LEN + 32 * ((footer_len - FOOTER_MIN_LEN) // INDEX_ENTRY_LEN) if signed else 0
    if footer_offset + footer_len + sig_len + TRAILER_LEN != len(c):
        raise RefCorrupt("footer_offset + footer_len + sig_len + 24 != file length")

    # Step 6.
    footer = c[footer_offset : footer_offset + footer_len]
    aad = cid + u64le(footer_offset) + u64le(footer_len)
    index_pt = open_(cipher_id, keys["index"], footer[:NONCE_LEN], footer[NONCE_LEN:], aad)
    if index_pt is None:
        raise RefCorrupt("footer does not open")
    block_count, pt_total_len, index_flags = struct.unpack_from("<QQI", index_pt, 0)
    if block_count != (footer_len - FOOTER_MIN_LEN) // INDEX_ENTRY_LEN:
        raise RefCorrupt("block_count does not match footer_len")
    if block_count > MAX_BLOCK_COUNT:
        raise RefCorrupt("block_count above MAX_BLOCK_COUNT")
    if index_flags & ~INDEX_FLAG_INCOMPLETE:
        raise RefCorrupt(f"unknown index_flags bits {index_flags:#x}")
    entries = []
    total = 0
    for i in range(block_count):
        off, pt_len = struct.unpack_from("<QI", index_pt, INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN)
        # Only the last entry may be empty: a stream's empty FINAL frame (FORMAT.md 12).
        if not (1 if i + 1 < block_count else 0) <= pt_len <= hdr["block_size"]:
            raise RefCorrupt(f"block {i}: pt_len {pt_len} out of range")
        frame_len = META_FRAME_LEN + pt_len + TAG_LEN
        if off < header_len or off + frame_len > footer_offset:
            raise RefCorrupt(f"block {i}: frame outside [header_len, footer_offset)")
        entries.append((off, pt_len))
        total += pt_len
    if total != pt_total_len:
        raise RefCorrupt("sum of pt_len != pt_total_len")

    return {
        **{k: v for k, v in hdr.items() if k != "stanzas"},
        "stanza_kinds": [kind for kind, _ in hdr["stanzas"]],
        "footer_offset": footer_offset,
        "footer_len": footer_len,
        "block_count": block_count,
        "pt_total_len": pt_total_len,
        "index_flags": index_flags,
        "frame_offsets": [off for off, _ in entries],
        "pt_lens": [pt_len for _, pt_len in entries],
        "mk": mk,
        "keys": keys,
        "sig_len": sig_len,
    }


def signed_message(
    header: bytes, block_count: int, digests: bytes, footer: bytes, footer_offset: int, signer_pub: bytes
) -> bytes:
    """Section 15.1."""
    return (
        SIG_LABEL
        + sha256(header)
        + u64le(block_count)
        + sha256(digests)
        + sha256(footer)
        + u64le(footer_offset)
        + signer_pub
    )


def check_signature(container: bytes, info: dict) -> dict:
    """Check S2 of section 8 for a signed container (after ``inspect``): parse the section,
    verify the Ed25519 signature. Returns ``{signer_pub, frame_digests, valid}``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    c = container
    n = info["block_count"]
    start = info["footer_offset"] + info["footer_len"]
    section = c[start : start + info["sig_len"]]
    assert len(section) == SIG_FIXED_LEN + 32 * n
    signer_pub, digests, signature = section[:32], section[32:-64], section[-64:]
    message = signed_message(
        c[: info["header_len"]],
        n,
        digests,
        c[info["footer_offset"] : start],
        info["footer_offset"],
        signer_pub,
    )
    try:
        Ed25519PublicKey.from_public_bytes(signer_pub).verify(signature, message)
        valid = True
    except (InvalidSignature, ValueError):
        valid = False
    return {
        "signer_pub": signer_pub,
        "frame_digests": [digests[32 * i : 32 * i + 32] for i in range(n)],
        "valid": valid,
    }


def decode_block(container: bytes, info: dict, i: int) -> bytes:
    """Step 7 of section 8 (section 5) for logical block i."""
    cid = info["container_id"]
    cipher_id = info["cipher_id"]
    off = info["frame_offsets"][i]
    pt_len = info["pt_lens"][i]
    frame = container[off : off + META_FRAME_LEN + pt_len + TAG_LEN]

    meta_pt = open_(
        cipher_id,
        info["keys"]["meta"],
        frame[:NONCE_LEN],
        frame[NONCE_LEN:META_FRAME_LEN],
        cid,
    )
    if meta_pt is None:
        raise RefCorrupt(f"block {i}: metadata does not open")
    (block_index, m_pt_len, meta_flags, reserved, cdk_salt, data_nonce, pt_sha) = struct.unpack(
        "<QIB3s16s12s32s", meta_pt
    )
    if block_index != i:
        raise RefCorrupt(f"block {i}: frame holds block_index {block_index}")
    if m_pt_len != pt_len:
        raise RefCorrupt(f"block {i}: pt_len {m_pt_len} differs from the index ({pt_len})")
    if reserved != b"\0\0\0":
        raise RefCorrupt(f"block {i}: reserved metadata bytes are not zero")
    if meta_flags & ~META_FLAG_FINAL:
        raise RefCorrupt(f"block {i}: unknown meta_flags bits {meta_flags:#x}")
    complete = not info["index_flags"] & INDEX_FLAG_INCOMPLETE
    want_final = complete and i == info["block_count"] - 1
    if bool(meta_flags & META_FLAG_FINAL) != want_final:
        raise RefCorrupt(f"block {i}: FINAL flag is {bool(meta_flags & 1)}, expected {want_final}")

    cdk = derive_cdk(info["mk"], cid, i, pt_sha, cdk_salt)
    aad = cid + u64le(i) + u32(pt_len) + u8(meta_flags)
    pt = open_(cipher_id, cdk, data_nonce, frame[META_FRAME_LEN:], aad)
    if pt is None:
        raise RefCorrupt(f"block {i}: data does not open")
    if sha256(pt) != pt_sha:
        raise RefCorrupt(f"block {i}: pt_sha256 mismatch")
    return pt


def decode(
    container: bytes,
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    signers: Iterable[bytes] | None = None,
) -> bytes:
    """Decrypt a whole container, making every check of FORMAT.md section 8 in order; with
    ``signers``, also S1-S3 (the container must be signed by one of them)."""
    pinned = set(signers) if signers is not None else None
    if pinned is not None and not parse_header(container)["header_flags"] & FLAG_SIGNED:  # S1
        raise RefSignature("not signed, and a signer is required")
    info = inspect(container, key=key, passphrase=passphrase)
    if pinned is None:
        return b"".join(decode_block(container, info, i) for i in range(info["block_count"]))
    sig = check_signature(container, info)  # S2
    if not sig["valid"]:
        raise RefSignature("signature does not verify")
    if sig["signer_pub"] not in pinned:
        raise RefSignature("signed by a key that is not pinned")
    out = []
    for i in range(info["block_count"]):
        off = info["frame_offsets"][i]
        if sha256(container[off : off + META_FRAME_LEN]) != sig["frame_digests"][i]:  # S3
            raise RefSignature(f"block {i}: frame does not match its signed digest")
        out.append(decode_block(container, info, i))
    return b"".join(out)


def _check_credentials(key: bytes | None, passphrase: str | None) -> None:
    if key is None and passphrase is None:
        raise ValueError("need a key or a passphrase")
    if key is not None and len(key) != 32:
        raise ValueError("a key-file key is 32 bytes")


# --------------------------------------------------------------------------------------------
# Writer


def encode(
    plaintext: bytes,
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    kdf: str = "argon2id",
    kdf_params: dict | None = None,
    cipher_id: int = CIPHER_AES_256_GCM,
    block_size: int = DEFAULT_BLOCK_SIZE,
    permute: bool = True,
    perm_window: int | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    extra_stanzas: Iterable[tuple[int, bytes]] = (),
    sign_with: bytes | None = None,
    archive: bool = False,
) -> bytes:
    """Reference writer.

    ``archive`` sets the ARCHIVE flag (section 16); ``plaintext`` is then an archive's plaintext
    (:func:`encode_archive_plaintext`).

    With both ``key`` and ``passphrase`` the header gets a ``key`` stanza followed by a
    passphrase stanza (``kdf`` is "argon2id" or "pbkdf2"). ``extra_stanzas`` are raw
    ``(kind, body)`` pairs appended after those (for tests of unknown kinds). ``rng(n)`` supplies
    every random byte, in this order: container_id, MK, per stanza (kdf_salt,) wrap_nonce, per
    logical block cdk_salt, data_nonce, meta_nonce, and finally footer_nonce.
    """
    _check_credentials(key, passphrase)
    if cipher_id not in (CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305):
        raise ValueError("cipher_id must be 1 or 2")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError("block_size out of range")
    if permute:
        if perm_window is None:
            perm_window = default_perm_window(block_size)
        if perm_window < 1:
            raise ValueError("perm_window must be >= 1")
        flags = FLAG_PERMUTED
    else:
        perm_window = 0
        flags = 0
    if sign_with is not None:
        flags |= FLAG_SIGNED
    if archive:
        flags |= FLAG_ARCHIVE

    def rand(n: int) -> bytes:
        out = rng(n)
        assert len(out) == n
        return out

    container_id = rand(16)
    mk = rand(32)
    keys = derive_keys(mk, container_id)

    # Stanzas (section 3.1).
    stanzas: list[tuple[int, bytes]] = []

    def wrap(kek: bytes, kind: int) -> bytes:
        nonce = rand(12)
        return nonce + seal(CIPHER_AES_256_GCM, kek, nonce, mk, container_id + u8(kind))

    if key is not None:
        stanzas.append((KIND_KEY, wrap(kek_key(key, container_id), KIND_KEY)))
    if passphrase is not None:
        pw = normalize_passphrase(passphrase)
        if kdf == "argon2id":
            p = {**DEFAULT_ARGON2, **(kdf_params or {})}
            if not argon2_params_ok(p["t_cost"], p["m_cost_kib"], p["lanes"]):
                raise ValueError("Argon2id parameters out of range")
            salt = rand(16)
            kek = kek_argon2id(pw, salt, p["t_cost"], p["m_cost_kib"], p["lanes"])
            body = salt + u32(p["t_cost"]) + u32(p["m_cost_kib"]) + u32(p["lanes"])
            stanzas.append((KIND_ARGON2ID, body + wrap(kek, KIND_ARGON2ID)))
        elif kdf == "pbkdf2":
            p = {**DEFAULT_PBKDF2, **(kdf_params or {})}
            if not pbkdf2_params_ok(p["iterations"]):
                raise ValueError("PBKDF2 iterations out of range")
            salt = rand(16)
            kek = kek_pbkdf2(pw, salt, p["iterations"])
            stanzas.append((KIND_PBKDF2, salt + u32(p["iterations"]) + wrap(kek, KIND_PBKDF2)))
        else:
            raise ValueError(f"unknown kdf {kdf!r}")
    stanzas.extend(extra_stanzas)
    if len(stanzas) > MAX_RECIPIENTS:
        raise ValueError("too many recipients")

    stanza_bytes = b"".join(u8(kind) + u16(len(body)) + body for kind, body in stanzas)
    used = HEADER_FIXED_LEN + len(stanza_bytes) + HEADER_TAIL_LEN
    header_len = -(-used // HEADER_ALIGN) * HEADER_ALIGN
    if header_len > MAX_HEADER_LEN:
        raise ValueError("header too large")
    fixed = (
        MAGIC
        + struct.pack(
            "<HIHBBII",
            FORMAT_VERSION,
            header_len,
            flags,
            cipher_id,
            0,
            block_size,
            perm_window,
        )
        + container_id
        + u16(len(stanzas))
    )
    assert len(fixed) == HEADER_FIXED_LEN
    body = fixed + stanza_bytes
    body += bytes(header_len - HEADER_TAIL_LEN - len(body))
    body += sha256(body)
    header = body + hmac_sha256(keys["header"], body)
    assert len(header) == header_len

    # Frames (section 5), built in logical order.
    blocks = [plaintext[i : i + block_size] for i in range(0, len(plaintext), block_size)]
    n = len(blocks)
    if n > MAX_BLOCK_COUNT:
        raise ValueError("too many blocks")
    frames = []
    for i, pt in enumerate(blocks):
        meta_flags = META_FLAG_FINAL if i == n - 1 else 0
        cdk_salt = rand(16)
        data_nonce = rand(12)
        pt_sha = sha256(pt)
        meta_pt = u64le(i) + u32(len(pt)) + u8(meta_flags) + bytes(3) + cdk_salt + data_nonce + pt_sha
        assert len(meta_pt) == META_PT_LEN
        cdk = derive_cdk(mk, container_id, i, pt_sha, cdk_salt)
        data_aad = container_id + u64le(i) + u32(len(pt)) + u8(meta_flags)
        data_ct = seal(cipher_id, cdk, data_nonce, pt, data_aad)
        meta_nonce = rand(12)
        meta_ct = seal(cipher_id, keys["meta"], meta_nonce, meta_pt, container_id)
        frames.append(meta_nonce + meta_ct + data_ct)

    # Placement (section 7).
    slots = physical_order(keys["perm"], n, perm_window) if permute else list(range(n))
    offsets = [0] * n
    pos = header_len
    out = [header]
    for logical in slots:
        offsets[logical] = pos
        out.append(frames[logical])
        pos += len(frames[logical])

    # Footer and trailer (section 6).
    footer_offset = pos
    footer_len = FOOTER_MIN_LEN + INDEX_ENTRY_LEN * n
    index_pt = u64le(n) + u64le(len(plaintext)) + u32(0)
    index_pt += b"".join(u64le(offsets[i]) + u32(len(blocks[i])) for i in range(n))
    footer_nonce = rand(12)
    aad = container_id + u64le(footer_offset) + u64le(footer_len)
    footer = footer_nonce + seal(cipher_id, keys["index"], footer_nonce, index_pt, aad)
    assert len(footer) == footer_len
    out.append(footer)
    if sign_with is not None:  # section 15 (Ed25519 is deterministic: vectors reproduce)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        priv = Ed25519PrivateKey.from_private_bytes(sign_with)
        signer_pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        digests = b"".join(sha256(f[:META_FRAME_LEN]) for f in frames)  # frame_digest_i, logical order
        message = signed_message(header, n, digests, footer, footer_offset, signer_pub)
        out.append(signer_pub + digests + priv.sign(message))
    out.append(u64le(footer_offset) + u64le(footer_len) + TRAILER_MAGIC)
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# Gateway streams between gateways (sections 12 and 12.2)

SK_MAGIC = b"QLTXSK1\n"
INFO_SHARED_KEY_CHECK = b"qeltrix-v6 shared-key check"
INFO_SHARED_KEY_SESSION = b"qeltrix-v6 shared-key session"
INFO_STREAM = b"qeltrix-v6 handshake stream"
KIND_HANDSHAKE = 16
DIRECTION_REQUEST = 1
DIRECTION_REPLY = 2
MAX_STREAM_HEADER_LEN = 4096


def shared_key_msg1(key: bytes, nonce_i: bytes) -> bytes:
    """msg1 of section 12.2: magic || nonce_I || key_check."""
    return SK_MAGIC + nonce_i + hkdf(key, nonce_i, INFO_SHARED_KEY_CHECK, 32)


def shared_key_session(key: bytes, nonce_i: bytes, nonce_r: bytes) -> bytes:
    return hkdf(key, nonce_i + nonce_r, INFO_SHARED_KEY_SESSION, 32)


def stream_mk(session: bytes, container_id: bytes, direction: int) -> bytes:
    return hkdf(session, container_id, INFO_STREAM + u8(direction), 32)


def encode_stream(
    plaintext: bytes,
    *,
    session: bytes,
    direction: int,
    block_size: int,
    rng: Callable[[int], bytes],
    cipher_id: int = CIPHER_AES_256_GCM,
) -> bytes:
    """A stream (section 12): header with one kind-16 stanza, frames in order, the last FINAL.

    ``rng(n)`` supplies container_id, then per block cdk_salt, data_nonce, meta_nonce.
    """
    container_id = rng(16)
    mk = stream_mk(session, container_id, direction)
    keys = derive_keys(mk, container_id)
    stanza = u8(KIND_HANDSHAKE) + u16(0)
    header_len = HEADER_ALIGN
    fixed = MAGIC + struct.pack("<HIHBBII", FORMAT_VERSION, header_len, 0, cipher_id, 0, block_size, 0)
    body = fixed + container_id + u16(1) + stanza
    body += bytes(header_len - HEADER_TAIL_LEN - len(body))
    body += sha256(body)
    out = [body + hmac_sha256(keys["header"], body)]
    blocks = [plaintext[i : i + block_size] for i in range(0, len(plaintext), block_size)] or [b""]
    for i, pt in enumerate(blocks):
        meta_flags = META_FLAG_FINAL if i == len(blocks) - 1 else 0
        cdk_salt, data_nonce = rng(16), rng(12)
        pt_sha = sha256(pt)
        meta_pt = u64le(i) + u32(len(pt)) + u8(meta_flags) + bytes(3) + cdk_salt + data_nonce + pt_sha
        cdk = derive_cdk(mk, container_id, i, pt_sha, cdk_salt)
        data_ct = seal(cipher_id, cdk, data_nonce, pt, container_id + u64le(i) + u32(len(pt)) + u8(meta_flags))
        meta_nonce = rng(12)
        out.append(meta_nonce + seal(cipher_id, keys["meta"], meta_nonce, meta_pt, container_id) + data_ct)
    return b"".join(out)


def decode_stream(stream: bytes, *, session: bytes, direction: int) -> bytes:
    """Read a complete stream received in ``direction`` (section 12): every check, in order."""
    (header_len,) = struct.unpack_from("<I", stream, 10)
    if header_len > MAX_STREAM_HEADER_LEN:
        raise RefMalformed("stream header larger than MAX_STREAM_HEADER_LEN")
    hdr = parse_header(stream[:header_len])
    if [k for k, _ in hdr["stanzas"]] != [KIND_HANDSHAKE] or hdr["header_flags"]:
        raise RefMalformed("a stream header has one handshake stanza and is not permuted")
    cid, cipher_id = hdr["container_id"], hdr["cipher_id"]
    mk = stream_mk(session, cid, direction)
    keys = derive_keys(mk, cid)
    if not _hmac_verify(keys["header"], stream[: header_len - 32], stream[header_len - 32 : header_len]):
        raise RefCorrupt("stream header_mac does not verify (wrong session or direction)")
    pos, i, out = header_len, 0, []
    while True:
        if pos + META_FRAME_LEN > len(stream):
            raise RefTruncated("stream ended without its FINAL frame")
        meta_pt = open_(cipher_id, keys["meta"], stream[pos : pos + 12], stream[pos + 12 : pos + META_FRAME_LEN], cid)
        if meta_pt is None:
            raise RefCorrupt(f"frame {i}: metadata does not open")
        block_index, pt_len, flags, reserved, cdk_salt, data_nonce, pt_sha = struct.unpack("<QIB3s16s12s32s", meta_pt)
        if block_index != i or reserved != bytes(3) or flags & ~META_FLAG_FINAL or pt_len > hdr["block_size"]:
            raise RefCorrupt(f"frame {i}: bad metadata")
        if pt_len == 0 and not flags & META_FLAG_FINAL:
            raise RefCorrupt(f"frame {i}: empty frame without FINAL")
        end = pos + META_FRAME_LEN + pt_len + TAG_LEN
        if end > len(stream):
            raise RefTruncated(f"stream cut inside frame {i}")
        cdk = derive_cdk(mk, cid, i, pt_sha, cdk_salt)
        pt = open_(
            cipher_id, cdk, data_nonce, stream[pos + META_FRAME_LEN : end], cid + u64le(i) + u32(pt_len) + u8(flags)
        )
        if pt is None or sha256(pt) != pt_sha:
            raise RefCorrupt(f"frame {i}: data does not open")
        out.append(pt)
        pos, i = end, i + 1
        if flags & META_FLAG_FINAL:
            if pos != len(stream):
                raise RefCorrupt("bytes after the FINAL frame")
            return b"".join(out)


# --------------------------------------------------------------------------------------------
# Helpers for building negative test cases


def rehash_header(container: bytes) -> bytes:
    """Recompute header_sha256 (not the MAC) after a deliberate header edit."""
    (header_len,) = struct.unpack_from("<I", container, 10)
    end = header_len - HEADER_TAIL_LEN
    return container[:end] + sha256(container[:end]) + container[end + 32 :]


# --------------------------------------------------------------------------------------------
# Archives (section 16)

MEMBER_FIXED_LEN = 36
LOCATOR_LEN = 32
LOCATOR_MAGIC = b"QLTXARC1"
MEMBER_TYPES = {0: "file", 1: "dir", 2: "symlink", 3: "hardlink"}
MAX_MEMBER_PATH_LEN = 4096
MAX_MEMBER_LINK_LEN = 4096
MAX_TABLE_LEN = 1 << 30  # section 9


def encode_archive_plaintext(members: list[dict]) -> bytes:
    """An archive's plaintext from members given in table order as dicts with ``path``,
    ``type``, ``mode``, ``mtime_ns``, and ``data`` (files), ``link`` (symlinks, hard links)."""
    codes = {v: k for k, v in MEMBER_TYPES.items()}
    data = b""
    placed: dict[str, tuple[int, int]] = {}
    table = b""
    for m in members:
        offset = size = 0
        if m["type"] == "file":
            offset, size = len(data), len(m["data"])
            data += m["data"]
            placed[m["path"]] = (offset, size)
        elif m["type"] == "hardlink":  # (a link to no member is encoded as is, for hostile tests)
            offset, size = placed.get(m["link"], (0, 0))
        path, link = m["path"].encode(), m.get("link", "").encode()
        table += (
            u8(codes[m["type"]])
            + u8(0)
            + u16(len(path))
            + u32(m["mode"])
            + struct.pack("<q", m["mtime_ns"])
            + u64le(offset)
            + u64le(size)
            + u32(len(link))
            + path
            + link
        )
    return data + table + u64le(len(data)) + u64le(len(table)) + u64le(len(members)) + LOCATOR_MAGIC


def decode_members(plaintext: bytes) -> list[dict]:
    """The member table of an archive's plaintext, with checks 1-4 of section 16 (failures
    are *corrupt*)."""
    total = len(plaintext)
    if total < LOCATOR_LEN:
        raise RefCorrupt("plaintext shorter than the locator")
    table_offset, table_len, count = struct.unpack_from("<QQQ", plaintext, total - LOCATOR_LEN)
    if plaintext[-8:] != LOCATOR_MAGIC:
        raise RefCorrupt("no archive locator")
    if table_offset + table_len + LOCATOR_LEN != total:
        raise RefCorrupt("locator does not match pt_total_len")
    if table_len > MAX_TABLE_LEN:
        raise RefMalformed("table_len over MAX_TABLE_LEN (limit exceeded)")
    if count > table_len // MEMBER_FIXED_LEN:
        raise RefCorrupt("member_count too large for table_len")
    t = plaintext[table_offset : table_offset + table_len]
    pos = 0
    out: list[dict] = []
    by_path: dict[str, dict] = {}
    for _ in range(count):
        if pos + MEMBER_FIXED_LEN > len(t):
            raise RefCorrupt("member runs past the table")
        code, reserved, path_len = struct.unpack_from("<BBH", t, pos)
        (mode,) = struct.unpack_from("<I", t, pos + 4)
        (mtime_ns,) = struct.unpack_from("<q", t, pos + 8)
        offset, size = struct.unpack_from("<QQ", t, pos + 16)
        (link_len,) = struct.unpack_from("<I", t, pos + 32)
        pos += MEMBER_FIXED_LEN
        if code not in MEMBER_TYPES or reserved != 0 or mode > 0o7777:
            raise RefCorrupt("bad member type, reserved byte or mode")
        if not 1 <= path_len <= MAX_MEMBER_PATH_LEN or link_len > MAX_MEMBER_LINK_LEN:
            raise RefCorrupt("member path_len or link_len out of range")
        if pos + path_len + link_len > len(t):
            raise RefCorrupt("member name runs past the table")
        try:
            path = t[pos : pos + path_len].decode("utf-8")
            link = t[pos + path_len : pos + path_len + link_len].decode("utf-8")
        except UnicodeDecodeError:
            raise RefCorrupt("member name is not UTF-8") from None
        pos += path_len + link_len
        parts = path.split("/")
        if "\0" in path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise RefCorrupt(f"bad member path {path!r}")
        if path in by_path:
            raise RefCorrupt(f"duplicate member path {path!r}")
        kind = MEMBER_TYPES[code]
        if kind == "file":
            ok = link_len == 0 and offset + size <= table_offset
        elif kind == "dir":
            ok = link_len == 0 and offset == 0 and size == 0
        elif kind == "symlink":
            ok = link_len >= 1 and offset == 0 and size == 0 and "\0" not in link
        else:
            target = by_path.get(link)
            ok = (
                target is not None and target["type"] == "file" and (offset, size) == (target["offset"], target["size"])
            )
        if not ok:
            raise RefCorrupt(f"member {path!r} has inconsistent fields")
        m = {"path": path, "type": kind, "mode": mode, "mtime_ns": mtime_ns, "offset": offset, "size": size}
        if kind in ("symlink", "hardlink"):
            m["link"] = link
        by_path[path] = m
        out.append(m)
    if pos != len(t):
        raise RefCorrupt("bytes left over after the last member")
    return out


def decode_archive(container: bytes, *, key: bytes | None = None, passphrase: str | None = None) -> list[dict]:
    """The members of an archive (section 16), each with its ``data`` for files and hard links."""
    if not parse_header(container)["header_flags"] & FLAG_ARCHIVE:
        raise RefMalformed("ARCHIVE is not set: a single-file container")
    pt = decode(container, key=key, passphrase=passphrase)
    members = decode_members(pt)
    for m in members:
        if m["type"] in ("file", "hardlink"):
            m["data"] = pt[m["offset"] : m["offset"] + m["size"]]
    return members
