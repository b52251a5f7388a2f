"""Tests of the independent reference implementation (tests/reference_decoder.py)."""

from __future__ import annotations

import json
import struct
import sys
import unicodedata
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_vectors  # noqa: E402 - tests/ is put on sys.path just above
import reference_decoder as ref  # noqa: E402 - tests/ is put on sys.path just above

VECTORS = HERE / "vectors"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
BS = 64
ARGON2_SMALL = {"t_cost": 1, "m_cost_kib": 64, "lanes": 1}
PBKDF2_SMALL = {"iterations": 1000}
ERRORS = {
    "malformed": ref.RefMalformed,
    "corrupt": ref.RefCorrupt,
    "wrong_key": ref.RefWrongKey,
    "truncated": ref.RefTruncated,
}


def data(n: int) -> bytes:
    return make_vectors.Drbg(f"plaintext {n}")(n)


def small(pt: bytes = b"x" * 200, **kw) -> bytes:
    kw.setdefault("key", KEY)
    kw.setdefault("block_size", BS)
    kw.setdefault("rng", make_vectors.Drbg("small"))
    return ref.encode(pt, **kw)


def reseal_footer(c: bytes, index_pt: bytes, key: bytes = KEY) -> bytes:
    """Replace the footer's plaintext, keeping it authentic (tests checks after step 6)."""
    info = ref.inspect(c, key=key)
    fo, fl = info["footer_offset"], len(index_pt) + 28
    nonce = c[fo : fo + 12]
    aad = info["container_id"] + ref.u64le(fo) + ref.u64le(fl)
    footer = nonce + ref.seal(info["cipher_id"], info["keys"]["index"], nonce, index_pt, aad)
    return c[:fo] + footer + ref.u64le(fo) + ref.u64le(fl) + ref.TRAILER_MAGIC


def index_pt_of(c: bytes, key: bytes = KEY) -> bytes:
    info = ref.inspect(c, key=key)
    fo, fl = info["footer_offset"], info["footer_len"]
    aad = info["container_id"] + ref.u64le(fo) + ref.u64le(fl)
    return ref.open_(
        info["cipher_id"],
        info["keys"]["index"],
        c[fo : fo + 12],
        c[fo + 12 : fo + fl],
        aad,
    )


# ---------------------------------------------------------------------------------- SipHash, P


def test_siphash_official_vectors():
    assert ref.siphash24(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5
    assert ref.siphash24(bytes(range(16)), b"") == 0x726FDB47DD0E0E31


@pytest.mark.parametrize("w", [0, 1, 12345])
def test_perm_is_a_permutation(w):
    k_perm = bytes(range(100, 116))
    for k in [*list(range(1, 34)), 64, 65, 257]:
        assert sorted(ref.perm(k_perm, w, k, j) for j in range(k)) == list(range(k))


def test_permutation_json():
    cases = json.loads((VECTORS / "permutation.json").read_text())
    assert {c["k"] for c in cases} >= {1, 2, 3, 5, 16, 17, 100, 1000}
    for case in cases:
        k_perm = bytes.fromhex(case["k_perm_hex"])
        outputs = [ref.perm(k_perm, case["w"], case["k"], j) for j in range(case["k"])]
        assert outputs == case["outputs"]
        assert sorted(outputs) == list(range(case["k"]))


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cipher_id", [1, 2])
@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 7 * BS + 5])
def test_round_trip_key(size, cipher_id):
    pt = data(size)
    c = ref.encode(pt, key=KEY, cipher_id=cipher_id, block_size=BS, perm_window=3)
    assert ref.decode(c, key=KEY) == pt
    info = ref.inspect(c, key=KEY)
    assert info["block_count"] == -(-size // BS)
    assert info["pt_total_len"] == size
    assert info["header_len"] % 4096 == 0
    assert info["footer_len"] == 48 + 12 * info["block_count"]
    assert len(c) == info["footer_offset"] + info["footer_len"] + 24


@pytest.mark.parametrize("permute", [True, False])
def test_round_trip_unpermuted_and_default_block_size(permute):
    pt = data(ref.DEFAULT_BLOCK_SIZE + 1)
    c = ref.encode(pt, key=KEY, permute=permute)
    assert ref.decode(c, key=KEY) == pt
    info = ref.inspect(c, key=KEY)
    assert info["pt_lens"] == [ref.DEFAULT_BLOCK_SIZE, 1]
    assert info["perm_window"] == (64 if permute else 0)
    assert info["header_flags"] == (1 if permute else 0)


@pytest.mark.parametrize(("kdf", "params"), [("argon2id", ARGON2_SMALL), ("pbkdf2", PBKDF2_SMALL)])
def test_round_trip_passphrase(kdf, params):
    pt = data(3 * BS + 2)
    pw = "Gr\u00fc\u00dfe, \u00e9t\u00e9"  # NFC
    c = ref.encode(pt, passphrase=pw, kdf=kdf, kdf_params=params, block_size=BS)
    assert ref.decode(c, passphrase=pw) == pt
    # The passphrase is normalised to NFC before the KDF.
    assert ref.decode(c, passphrase=unicodedata.normalize("NFD", pw)) == pt
    with pytest.raises(ref.RefWrongKey):
        ref.decode(c, passphrase=pw + "!")
    with pytest.raises(ref.RefWrongKey):
        ref.decode(c, key=KEY)  # no stanza of the key kind


def test_multi_recipient():
    pt = data(100)
    c = ref.encode(
        pt,
        key=KEY,
        passphrase="pw",
        kdf="pbkdf2",
        kdf_params=PBKDF2_SMALL,
        block_size=BS,
    )
    assert ref.decode(c, key=KEY) == pt
    assert ref.decode(c, passphrase="pw") == pt
    assert ref.parse_header(c)["recipient_count"] == 2


def test_deterministic_with_rng():
    a = ref.encode(data(300), key=KEY, block_size=BS, rng=make_vectors.Drbg("x"))
    b = ref.encode(data(300), key=KEY, block_size=BS, rng=make_vectors.Drbg("x"))
    assert a == b


def test_empty_layout():
    c = ref.encode(b"", key=KEY)
    info = ref.inspect(c, key=KEY)
    assert (info["block_count"], info["footer_len"]) == (0, 48)
    assert len(c) == info["header_len"] + 48 + 24 == 4096 + 72
    assert ref.decode(c, key=KEY) == b""


def test_frame_placement_follows_section_7():
    pt = data(37 * 16 + 5)
    c = ref.encode(pt, key=KEY, block_size=16, perm_window=8)
    info = ref.inspect(c, key=KEY)
    slots = ref.physical_order(info["keys"]["perm"], 38, 8)
    # Frames are contiguous from header_len, in physical slot order.
    pos = info["header_len"]
    for logical in slots:
        assert info["frame_offsets"][logical] == pos
        pos += ref.META_FRAME_LEN + info["pt_lens"][logical] + ref.TAG_LEN
    assert pos == info["footer_offset"]
    assert slots != list(range(38))
    # Permutation stays within windows.
    for s, logical in enumerate(slots):
        assert s // 8 == logical // 8


def test_big_header_rounds_to_4096():
    extra = [(200, bytes(1000))] * 4  # unknown kinds: skipped by readers
    c = small(extra_stanzas=extra)
    hdr = ref.parse_header(c)
    assert hdr["header_len"] == 8192
    assert hdr["recipient_count"] == 5
    assert ref.decode(c, key=KEY) == b"x" * 200


# ---------------------------------------------------------------------------------- vectors


def vector_names():
    return sorted(p.stem for p in VECTORS.glob("*.json") if p.stem != "permutation")


def test_expected_vectors_present():
    required = {
        "empty", "one-block", "one-byte-over", "chacha", "permuted-window", "argon2id", "pbkdf2",
        "multi-recipient", "bad-header-checksum", "bad-header-mac", "truncated", "swapped-frames", "signed",
        "archive",
    }  # fmt: skip
    assert required <= set(vector_names())


@pytest.mark.parametrize("name", vector_names())
def test_vector(name):
    meta = json.loads((VECTORS / f"{name}.json").read_text())
    c = (VECTORS / meta["container"]).read_bytes()
    creds = []
    if "key_hex" in meta:
        creds.append({"key": bytes.fromhex(meta["key_hex"])})
    if "passphrase" in meta:
        creds.append({"passphrase": meta["passphrase"]})
    assert creds
    raw = make_vectors.raw_header_fields(c)
    for field in raw:
        assert meta[field] == raw[field], field
    for cred in creds:
        if meta["expect"] == "ok":
            pt = ref.decode(c, **cred)
            assert pt.hex() == meta["plaintext_hex"]
            info = ref.inspect(c, **cred)
            for field in (
                "footer_offset",
                "footer_len",
                "block_count",
                "frame_offsets",
            ):
                assert info[field] == meta[field], field
            assert info["container_id"].hex() == meta["container_id_hex"]
        else:
            with pytest.raises(ERRORS[meta["expect"]]):
                ref.decode(c, **cred)


def test_bad_header_mac_fails_at_the_mac():
    c = (VECTORS / "bad-header-mac.qltx").read_bytes()
    ref.parse_header(c)  # steps 1-2 pass
    key = bytes.fromhex(json.loads((VECTORS / "bad-header-mac.json").read_text())["key_hex"])
    with pytest.raises(ref.RefCorrupt, match="header_mac"):
        ref.decode(c, key=key)


def test_vectors_are_up_to_date():
    files = make_vectors.build_vectors()
    for fname, content in files.items():
        assert (VECTORS / fname).read_bytes() == content, f"{fname}: run python tests/make_vectors.py"
        assert len(content) < 20 * 1024


# ---------------------------------------------------------------------------------- failures


def test_wrong_key():
    with pytest.raises(ref.RefWrongKey):
        ref.decode(small(), key=OTHER_KEY)


def test_every_flipped_header_byte_is_detected():
    c = small()
    header_len = ref.parse_header(c)["header_len"]
    for pos in range(header_len):
        bad = bytearray(c)
        bad[pos] ^= 0x10
        with pytest.raises((ref.RefCorrupt, ref.RefMalformed)):
            ref.decode(bytes(bad), key=KEY)


def test_every_flipped_body_byte_is_detected():
    c = small(b"y" * 70, block_size=32)
    header_len = ref.parse_header(c)["header_len"]
    for pos in range(header_len, len(c)):
        bad = bytearray(c)
        bad[pos] ^= 0x01
        expected = ref.RefTruncated if pos >= len(c) - 8 else ref.RefCorrupt
        with pytest.raises(expected):
            ref.decode(bytes(bad), key=KEY)


def test_truncation_at_every_length():
    c = small(b"z" * 100)
    header_len = ref.parse_header(c)["header_len"]
    for n in range(header_len, len(c)):
        with pytest.raises(ref.RefTruncated):
            ref.decode(c[:n], key=KEY)
    for n in (0, 10):
        with pytest.raises(ref.RefMalformed):
            ref.decode(c[:n], key=KEY)
    # Cut inside the header, once header_len is readable: the header is longer than the file.
    for n in (ref.HEADER_FIXED_LEN, 200, header_len - 1):
        with pytest.raises(ref.RefTruncated):
            ref.decode(c[:n], key=KEY)


def test_not_a_container():
    with pytest.raises(ref.RefMalformed):
        ref.decode(b"PK\x03\x04" + bytes(5000), key=KEY)


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [
        (8, "<H", 2),  # format_version
        (10, "<I", 100),  # header_len below HEADER_FIXED_LEN + 64
        (10, "<I", ref.MAX_HEADER_LEN + 4096),  # header_len too large
        (14, "<H", 9),  # unknown header flag (bit 3; bit 1 is SIGNED, bit 2 ARCHIVE)
        (16, "<B", 3),  # unknown cipher
        (17, "<B", 1),  # reserved
        (18, "<I", 15),  # block_size below MIN_BLOCK_SIZE
        (18, "<I", ref.MAX_BLOCK_SIZE + 1),
        (22, "<I", 0),  # PERMUTED set with perm_window 0
        (42, "<H", 65),  # too many recipients
        (45, "<H", 59),  # key stanza with the wrong body_len
        (42, "<H", 0),  # no recipients
        (42, "<H", 2),  # padding would parse as a reserved kind-0 stanza
    ],
)
def test_malformed_header_fields(offset, fmt, value):
    bad = bytearray(small())
    struct.pack_into(fmt, bad, offset, value)
    with pytest.raises(ref.RefMalformed):
        ref.decode(ref.rehash_header(bytes(bad)), key=KEY)


def test_nonzero_padding_is_corrupt():
    bad = bytearray(small())
    bad[4000] = 1
    with pytest.raises(ref.RefCorrupt):
        ref.decode(ref.rehash_header(bytes(bad)), key=KEY)


def test_perm_window_must_be_zero_when_not_permuted():
    bad = bytearray(small(permute=False))
    struct.pack_into("<I", bad, 22, 4)
    with pytest.raises(ref.RefMalformed):
        ref.decode(ref.rehash_header(bytes(bad)), key=KEY)


def test_stanza_kinds():
    # Unknown kinds are skipped; a known kind with the wrong body_len is rejected.
    assert ref.decode(small(extra_stanzas=[(99, b"abc")]), key=KEY) == b"x" * 200
    with pytest.raises(ref.RefMalformed):
        ref.decode(small(extra_stanzas=[(0, b"")]), key=KEY)
    with pytest.raises(ref.RefMalformed):
        ref.decode(small(extra_stanzas=[(ref.KIND_PBKDF2, bytes(79))]), key=KEY)
    with pytest.raises(ref.RefMalformed):
        ref.decode(small(extra_stanzas=[(99, bytes(ref.MAX_STANZA_BODY_LEN + 1))]), key=KEY)
    # An unknown stanza whose body runs past header_len - 64.
    bad = bytearray(small())
    struct.pack_into("<BH", bad, ref.HEADER_FIXED_LEN, 99, 4000)
    with pytest.raises(ref.RefMalformed, match="past"):
        ref.decode(ref.rehash_header(bytes(bad)), key=KEY)


@pytest.mark.parametrize(
    ("kdf", "params", "field_offset", "value"),
    [
        ("argon2id", ARGON2_SMALL, 16, 0),  # t_cost
        ("argon2id", ARGON2_SMALL, 16, 17),
        ("argon2id", ARGON2_SMALL, 20, 7),  # m_cost_kib < 8 * lanes
        ("argon2id", ARGON2_SMALL, 20, 2**31),  # would take 2 TiB: must not run
        ("argon2id", ARGON2_SMALL, 24, 0),  # lanes
        ("argon2id", ARGON2_SMALL, 24, 17),
        ("pbkdf2", PBKDF2_SMALL, 16, 999),
        ("pbkdf2", PBKDF2_SMALL, 16, 10_000_001),
    ],
)
def test_kdf_limits_checked_before_kdf(kdf, params, field_offset, value):
    c = bytearray(ref.encode(b"abc", passphrase="pw", kdf=kdf, kdf_params=params, block_size=BS))
    struct.pack_into("<I", c, ref.HEADER_FIXED_LEN + 3 + field_offset, value)
    c = ref.rehash_header(bytes(c))
    with pytest.raises(ref.RefMalformed):
        ref.decode(c, passphrase="pw")
    ref.parse_header(c)  # steps 1-2 do not look at KDF parameters


def test_swapped_permuted_frames():
    c = small(b"q" * 64, block_size=16, perm_window=4)
    h = ref.parse_header(c)["header_len"]
    n = ref.META_FRAME_LEN + 16 + ref.TAG_LEN
    swapped = c[:h] + c[h + n : h + 2 * n] + c[h : h + n] + c[h + 2 * n :]
    with pytest.raises(ref.RefCorrupt, match="block_index"):
        ref.decode(swapped, key=KEY)


def test_footer_consistency_checks():
    c = small(b"w" * 100)
    ipt = index_pt_of(c)
    assert ref.decode(reseal_footer(c, ipt), key=KEY) == b"w" * 100
    bc, total, flags = struct.unpack_from("<QQI", ipt)
    entries = ipt[20:]
    cases = {
        "pt_total_len": struct.pack("<QQI", bc, total + 1, flags) + entries,
        "index_flags": struct.pack("<QQI", bc, total, 2) + entries,
        "block_count": struct.pack("<QQI", bc + 1, total, flags) + entries,
        "pt_len 0": ipt[:20] + entries[:8] + struct.pack("<I", 0) + entries[12:],
        "pt_len > block_size": ipt[:20] + entries[:8] + struct.pack("<I", BS + 1) + entries[12:],
        "frame before header": ipt[:20] + struct.pack("<Q", 100) + entries[8:],
    }
    for what, bad in cases.items():
        with pytest.raises(ref.RefCorrupt):
            ref.decode(reseal_footer(c, bad), key=KEY)
        assert what


def test_final_flag_checked():
    c = small(b"v" * 100)
    ipt = index_pt_of(c)
    # INCOMPLETE set, but the last block carries FINAL.
    bad = ipt[:16] + struct.pack("<I", ref.INDEX_FLAG_INCOMPLETE) + ipt[20:]
    with pytest.raises(ref.RefCorrupt, match="FINAL"):
        ref.decode(reseal_footer(c, bad), key=KEY)
    # Drop the last block: the new last block lacks FINAL.
    flags = struct.unpack_from("<I", ipt, 16)[0]
    first_len = struct.unpack_from("<I", ipt, 28)[0]
    bad = struct.pack("<QQI", 1, first_len, flags) + ipt[20:32]
    with pytest.raises(ref.RefCorrupt, match="FINAL"):
        ref.decode(reseal_footer(c, bad), key=KEY)
    # ... which is fine for an INCOMPLETE (recovered) stream.
    ok = struct.pack("<QQI", 1, first_len, ref.INDEX_FLAG_INCOMPLETE) + ipt[20:32]
    assert ref.decode(reseal_footer(c, ok), key=KEY) == b"v" * first_len


def test_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ref.encode(b"a")
    with pytest.raises(ValueError):
        ref.encode(b"a", key=bytes(31))
    with pytest.raises(ValueError):
        ref.encode(b"a", key=KEY, block_size=15)
    with pytest.raises(ValueError):
        ref.encode(b"a", key=KEY, cipher_id=3)
    with pytest.raises(ValueError):
        ref.encode(b"a", passphrase="p", kdf="pbkdf2", kdf_params={"iterations": 10})
