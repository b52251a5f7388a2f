"""Regenerate tests/vectors/ deterministically with the reference encoder.

Run as ``python tests/make_vectors.py``. Every random byte comes from a SHA-256 counter DRBG
seeded with the vector's name, so the output is byte-for-byte reproducible. The containers are
written by ``tests/reference_decoder.py``, which is written from docs/FORMAT.md only.

For each NAME this writes ``NAME.qltx`` and ``NAME.json``; it also writes ``permutation.json``
and ``stream/shared-key.json`` (FORMAT.md section 12.2; in a subdirectory, so the
container-vector globs ``vectors/*.json`` do not take it for a container).
``python tests/make_vectors.py --check`` compares the files on disk instead of writing them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_decoder as ref

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
MAX_FILE_SIZE = 20 * 1024

ARGON2_SMALL = {"t_cost": 1, "m_cost_kib": 64, "lanes": 1}
PBKDF2_SMALL = {"iterations": 1000}


class Drbg:
    """SHA-256 in counter mode: block_i = SHA256(seed || u64le(i)). Not for real keys."""

    def __init__(self, label: str) -> None:
        self.seed = hashlib.sha256(b"qeltrix-v6 test vectors|" + label.encode()).digest()
        self.counter = 0
        self.buf = b""

    def __call__(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += hashlib.sha256(self.seed + struct.pack("<Q", self.counter)).digest()
            self.counter += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def raw_header_fields(c: bytes) -> dict:
    """Header fields read straight from the bytes, without any check (works on bad vectors)."""
    version, header_len, flags, cipher_id, _reserved, block_size, perm_window = struct.unpack_from("<HIHBBII", c, 8)
    (recipient_count,) = struct.unpack_from("<H", c, 42)
    return {
        "format_version": version,
        "header_len": header_len,
        "cipher_id": cipher_id,
        "block_size": block_size,
        "perm_window": perm_window,
        "header_flags": flags,
        "recipient_count": recipient_count,
        "container_id_hex": c[26:42].hex(),
    }


def _credentials(key: bytes | None, passphrase: str | None) -> dict:
    out = {}
    if key is not None:
        out["key_hex"] = key.hex()
    if passphrase is not None:
        out["passphrase"] = passphrase
    return out


def ok_vector(
    name: str,
    description: str,
    size: int,
    *,
    use_key: bool = True,
    passphrase: str | None = None,
    **encode_args,
) -> tuple[str, bytes, dict]:
    rng = Drbg(name)
    key = rng(32) if use_key else None
    plaintext = rng(size)
    if encode_args.pop("signed", False):
        encode_args["sign_with"] = rng(32)
    container = ref.encode(plaintext, key=key, passphrase=passphrase, rng=rng, **encode_args)

    # Self-checks: every credential opens it, and frames sit where section 7 says.
    for cred in ({"key": key}, {"passphrase": passphrase}):
        if next(iter(cred.values())) is not None:
            assert ref.decode(container, **cred) == plaintext, name
    info = ref.inspect(container, key=key, passphrase=passphrase)
    if info["header_flags"] & ref.FLAG_PERMUTED:
        slots = ref.physical_order(info["keys"]["perm"], info["block_count"], info["perm_window"])
        assert [info["frame_offsets"][b] for b in slots] == sorted(info["frame_offsets"]), name

    meta = {
        "description": description,
        "container": f"{name}.qltx",
        **_credentials(key, passphrase),
        "plaintext_hex": plaintext.hex(),
        "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
        "expect": "ok",
        **raw_header_fields(container),
        "stanza_kinds": info["stanza_kinds"],
        "footer_offset": info["footer_offset"],
        "footer_len": info["footer_len"],
        "block_count": info["block_count"],
        "pt_total_len": info["pt_total_len"],
        "index_flags": info["index_flags"],
        "frame_offsets": info["frame_offsets"],
        "pt_lens": info["pt_lens"],
    }
    if passphrase is not None:
        meta["kdf_params"] = encode_args.get("kdf_params")
    if "sign_with" in encode_args:
        sig = ref.check_signature(container, info)
        assert sig["valid"], name
        assert ref.decode(container, key=key, signers=[sig["signer_pub"]]) == plaintext, name
        meta["signer_pub_hex"] = sig["signer_pub"].hex()
        meta["signer"] = "qltx-ed25519:" + base64.urlsafe_b64encode(
            sig["signer_pub"] + hashlib.sha256(sig["signer_pub"]).digest()[:4]
        ).decode().rstrip("=")
        meta["sig_len"] = info["sig_len"]
        meta["frame_digest_hex"] = [d.hex() for d in sig["frame_digests"]]
    return name, container, meta


def bad_vector(name: str, description: str, container: bytes, expect: str, key: bytes) -> tuple[str, bytes, dict]:
    try:
        ref.decode(container, key=key)
    except ref.RefError as e:
        assert e.kind == expect, (name, e.kind, e)
    else:
        raise AssertionError(f"{name} decoded")
    meta = {
        "description": description,
        "container": f"{name}.qltx",
        "key_hex": key.hex(),
        "expect": expect,
        **raw_header_fields(container),
    }
    return name, container, meta


def container_vectors() -> list[tuple[str, bytes, dict]]:
    vecs = [
        ok_vector("empty", "empty input: zero blocks, footer_len 48, default block size", 0),
        ok_vector("one-block", "exactly one full block (block_size 64)", 64, block_size=64),
        ok_vector(
            "one-byte-over",
            "65 bytes with block_size 64: pt_len 64 and 1",
            65,
            block_size=64,
        ),
        ok_vector("chacha", "ChaCha20-Poly1305 (cipher_id 2)", 150, block_size=64, cipher_id=2),
        ok_vector(
            "permuted-window",
            "38 blocks of 16 (last 5 bytes), perm_window 8: windows 8,8,8,8,6",
            37 * 16 + 5,
            block_size=16,
            perm_window=8,
        ),
        ok_vector(
            "not-permuted",
            "PERMUTED clear, perm_window 0: frames in logical order",
            5 * 16 + 3,
            block_size=16,
            permute=False,
        ),
        ok_vector(
            "argon2id",
            "passphrase with Argon2id t=1, m=64 KiB, lanes=1",
            100,
            use_key=False,
            passphrase="correct horse battery staple",
            kdf="argon2id",
            kdf_params=ARGON2_SMALL,
            block_size=64,
        ),
        ok_vector(
            "pbkdf2",
            "non-ASCII passphrase (NFC, UTF-8) with PBKDF2-HMAC-SHA256, 1000 iterations",
            100,
            use_key=False,
            passphrase="p\u00e4ssw\u00f6rd \u00fcn\u00efc\u00f6de",
            kdf="pbkdf2",
            kdf_params=PBKDF2_SMALL,
            block_size=64,
        ),
        ok_vector(
            "multi-recipient",
            "a key stanza and a pbkdf2 stanza; both credentials open it",
            100,
            passphrase="multi recipient passphrase",
            kdf="pbkdf2",
            kdf_params=PBKDF2_SMALL,
            block_size=64,
        ),
        ok_vector(
            "signed",
            "signed by an Ed25519 key (section 15): 3 blocks of 64 (last 20 bytes), perm_window 2",
            148,
            block_size=64,
            perm_window=2,
            signed=True,
        ),
    ]

    vecs.append(archive_vector())

    # Negative vectors.
    rng = Drbg("negative")
    key = rng(32)
    base = ref.encode(rng(100), key=key, block_size=64, rng=rng)

    c = bytearray(base)
    c[ref.HEADER_FIXED_LEN + 3 + 12 + 5] ^= 0x01  # one bit of wrapped_mk in stanza 0
    vecs.append(
        bad_vector(
            "bad-header-checksum",
            "one bit of the key stanza's wrapped_mk flipped; header_sha256 catches it (step 2)",
            bytes(c),
            "corrupt",
            key,
        )
    )

    c = bytearray(base)
    struct.pack_into("<I", c, 18, 80)  # block_size 64 -> 80, still valid
    vecs.append(
        bad_vector(
            "bad-header-mac",
            "block_size changed 64 -> 80 and header_sha256 recomputed: only header_mac fails",
            ref.rehash_header(bytes(c)),
            "corrupt",
            key,
        )
    )

    vecs.append(bad_vector("truncated", "last byte removed (step 5)", base[:-1], "truncated", key))

    other_key = rng(32)
    vecs.append(
        bad_vector(
            "wrong-key",
            "valid container; key_hex is not its key (step 3)",
            ref.encode(rng(100), key=other_key, block_size=64, rng=rng),
            "wrong_key",
            key,
        )
    )

    swap_src = ref.encode(rng(64), key=key, block_size=16, perm_window=4, rng=rng)
    (header_len,) = struct.unpack_from("<I", swap_src, 10)
    flen = ref.META_FRAME_LEN + 16 + ref.TAG_LEN
    a, b = header_len, header_len + flen
    swapped = swap_src[:a] + swap_src[b : b + flen] + swap_src[a:b] + swap_src[b + flen :]
    vecs.append(
        bad_vector(
            "swapped-frames",
            "4 full blocks of 16; the first two stored frames exchanged (block_index, step 7)",
            swapped,
            "corrupt",
            key,
        )
    )
    return vecs


def archive_vector() -> tuple[str, bytes, dict]:
    """An archive (section 16): a directory, files of 0, 5 and 70 bytes (over one 64-byte
    block), a symlink and a hard link."""
    rng = Drbg("archive")
    key = rng(32)
    t = 1_700_000_000_123_456_789
    spec = [
        {"path": "docs", "type": "dir", "mode": 0o755, "mtime_ns": t},
        {"path": "docs/empty", "type": "file", "mode": 0o644, "mtime_ns": t, "data": b""},
        {"path": "docs/a.txt", "type": "file", "mode": 0o600, "mtime_ns": t + 1, "data": b"hello"},
        {"path": "docs/big.bin", "type": "file", "mode": 0o644, "mtime_ns": -1, "data": rng(70)},
        {"path": "docs/link", "type": "symlink", "mode": 0o777, "mtime_ns": t, "link": "a.txt"},
        {"path": "docs/hard", "type": "hardlink", "mode": 0o600, "mtime_ns": t + 1, "link": "docs/a.txt"},
    ]
    plaintext = ref.encode_archive_plaintext(spec)
    container = ref.encode(plaintext, key=key, rng=rng, block_size=64, archive=True)
    members = ref.decode_archive(container, key=key)
    for want, got in zip(spec, members, strict=True):
        assert got.get("data", b"") == want.get("data", b"" if want["type"] != "hardlink" else b"hello")
    info = ref.inspect(container, key=key)
    meta = {
        "description": "an archive (section 16): dir, files of 0, 5 and 70 bytes, a symlink, a hard link",
        "container": "archive.qltx",
        "key_hex": key.hex(),
        "plaintext_hex": plaintext.hex(),
        "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
        "expect": "ok",
        **raw_header_fields(container),
        "stanza_kinds": info["stanza_kinds"],
        "footer_offset": info["footer_offset"],
        "footer_len": info["footer_len"],
        "block_count": info["block_count"],
        "pt_total_len": info["pt_total_len"],
        "index_flags": info["index_flags"],
        "frame_offsets": info["frame_offsets"],
        "pt_lens": info["pt_lens"],
        "members": [{k: (v.hex() if k == "data" else v) for k, v in m.items()} for m in members],
    }
    return "archive", container, meta


def permutation_cases() -> list[dict]:
    keys = [bytes(range(16)), Drbg("permutation")(16)]
    cases = []
    for k in (1, 2, 3, 5, 16, 17, 100, 1000):
        cases.append((keys[0], 0, k))
    for k in (2, 17, 100):
        cases.append((keys[1], 7, k))
    out = []
    for k_perm, w, k in cases:
        outputs = [ref.perm(k_perm, w, k, j) for j in range(k)]
        assert sorted(outputs) == list(range(k)), (w, k)
        out.append({"k_perm_hex": k_perm.hex(), "w": w, "k": k, "outputs": outputs})
    return out


def stream_shared_key_vector() -> dict:
    """FORMAT.md section 12.2: a shared-key session, its stream MKs and a one-frame request."""
    rng = Drbg("stream-shared-key")
    key, nonce_i, nonce_r = rng(32), rng(32), rng(32)
    session = ref.shared_key_session(key, nonce_i, nonce_r)
    container_id = rng(16)
    plaintext = b"SET greeting hello\r\n"
    stream = ref.encode_stream(
        plaintext,
        session=session,
        direction=ref.DIRECTION_REQUEST,
        block_size=64 << 10,
        rng=Drbg("stream-shared-key frames"),
    )
    stream_cid = stream[26:42]
    assert ref.decode_stream(stream, session=session, direction=ref.DIRECTION_REQUEST) == plaintext
    return {
        "description": "shared-key session (FORMAT.md 12.2): msg1, session, request/reply MKs, a request stream",
        "key_hex": key.hex(),
        "nonce_i_hex": nonce_i.hex(),
        "nonce_r_hex": nonce_r.hex(),
        "msg1_hex": ref.shared_key_msg1(key, nonce_i).hex(),
        "session_hex": session.hex(),
        "container_id_hex": container_id.hex(),
        "request_mk_hex": ref.stream_mk(session, container_id, ref.DIRECTION_REQUEST).hex(),
        "reply_mk_hex": ref.stream_mk(session, container_id, ref.DIRECTION_REPLY).hex(),
        "stream_container_id_hex": stream_cid.hex(),
        "stream_direction": ref.DIRECTION_REQUEST,
        "stream_hex": stream.hex(),
        "plaintext_hex": plaintext.hex(),
    }


def _dumps(obj, indent: int = 0) -> str:
    """JSON with one key per line but lists of scalars kept on one line."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        items = [pad + _dumps(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(obj, separators=(", ", ": "))


def build_vectors() -> dict[str, bytes]:
    """All vector files, as {file name: content}."""
    files: dict[str, bytes] = {}
    for name, container, meta in container_vectors():
        files[f"{name}.qltx"] = container
        files[f"{name}.json"] = (_dumps(meta) + "\n").encode()
    files["permutation.json"] = (_dumps(permutation_cases()) + "\n").encode()
    files["stream/shared-key.json"] = (_dumps(stream_shared_key_vector()) + "\n").encode()
    for fname, data in files.items():
        assert len(data) < MAX_FILE_SIZE, (fname, len(data))
    return files


def main(argv: list[str]) -> int:
    files = build_vectors()
    if "--check" in argv:
        bad = [f for f, d in files.items() if not (VECTOR_DIR / f).is_file() or (VECTOR_DIR / f).read_bytes() != d]
        for f in bad:
            print(f"differs: {f}")
        return 1 if bad else 0
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for fname, data in sorted(files.items()):
        (VECTOR_DIR / fname).parent.mkdir(parents=True, exist_ok=True)
        (VECTOR_DIR / fname).write_bytes(data)
        print(f"wrote tests/vectors/{fname} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
