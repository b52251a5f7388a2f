"""The security properties of docs/DESIGN.md ("Security properties"), one test each,
on small containers (64-byte blocks) so every byte position can be attacked."""

from __future__ import annotations

import io
import os
import struct

import pytest
import qeltrix_v6
import reference_decoder as ref
from conftest import KEY, OTHER_KEY, PBKDF2_SMALL, make_plaintext, pack_bytes, unpack_bytes
from hypothesis import given
from hypothesis import strategies as st
from qeltrix_v6 import (
    AuthenticationError,
    IntegrityError,
    MalformedError,
    QeltrixError,
    TruncatedError,
    WrongKeyError,
)

BS = 64
N_BLOCKS = 10
PT = make_plaintext(BS * N_BLOCKS, "security")


@pytest.fixture(scope="module")
def box() -> bytes:
    """A permuted container of 10 full 64-byte blocks under KEY."""
    return pack_bytes(PT, block_size=BS)


@pytest.fixture(scope="module")
def info(box: bytes) -> dict:
    return ref.inspect(box, key=KEY)


def frame_len(info: dict, i: int) -> int:
    return ref.META_FRAME_LEN + info["pt_lens"][i] + ref.TAG_LEN


def frame(c: bytes, info: dict, i: int) -> bytes:
    off = info["frame_offsets"][i]
    return c[off : off + frame_len(info, i)]


def put(c: bytes, off: int, data: bytes) -> bytes:
    return c[:off] + data + c[off + len(data) :]


def flip(c: bytes, pos: int, bit: int) -> bytes:
    return put(c, pos, bytes([c[pos] ^ (1 << bit)]))


def block_range(i: int) -> tuple[int, int]:
    """(offset, length) of logical block i of PT."""
    return i * BS, BS


def logical_at(info: dict, pos: int) -> int | None:
    """The logical block whose frame holds file offset pos, if any."""
    for i, off in enumerate(info["frame_offsets"]):
        if off <= pos < off + frame_len(info, i):
            return i
    return None


def unpack_must_fail(c: bytes, pt: bytes = PT, **cred: object) -> QeltrixError:
    """Unpack c: it must raise a QeltrixError, and whatever reached the sink before the error
    must be a prefix of the true plaintext (no byte of a failed block is ever released)."""
    cred.setdefault("workers", 1)
    if "key" not in cred and "passphrase" not in cred:
        cred["key"] = KEY
    out = io.BytesIO()
    with pytest.raises(QeltrixError) as e:
        qeltrix_v6.unpack(io.BytesIO(c), out, **cred)  # type: ignore[arg-type]
    written = out.getvalue()
    assert written == pt[: len(written)], "wrong plaintext was released"
    assert len(written) < len(pt)
    return e.value


def test_layout_of_the_attacked_container(box, info):
    assert info["block_count"] == N_BLOCKS
    assert info["header_len"] == 4096
    assert len(box) == 4096 + N_BLOCKS * (ref.META_FRAME_LEN + BS + ref.TAG_LEN) + 48 + 12 * N_BLOCKS + 24
    assert unpack_bytes(box) == PT


# ---------------------------------------------------------------------------------- (a) bit flips


def test_bit_flip_every_byte_position(box, info):
    """A bit flipped anywhere makes unpack fail with a non-"wrong key" error and release no wrong
    byte; in the authenticated regions the error is AuthenticationError, and a random-access read
    of the affected block fails too."""
    header_len = info["header_len"]
    stanza_body = range(ref.HEADER_FIXED_LEN + 3, info["stanza_area_end"])
    footer_offset = info["footer_offset"]
    trailer = len(box) - ref.TRAILER_LEN
    padding = range(info["stanza_area_end"], header_len - 64)
    frames = range(header_len, footer_offset)
    # One bit per position in the frames and the header padding (bit = pos % 8), every bit of
    # every other byte (fixed fields, stanza, checksum, MAC, footer, trailer).
    flips = [
        (pos, bit)
        for pos in range(len(box))
        for bit in range(8)
        if bit == pos % 8 or (pos not in padding and pos not in frames)
    ]
    seen: dict[str, set[type]] = {}
    for pos, bit in flips:
        bad = flip(box, pos, bit)
        err = unpack_must_fail(bad)
        assert not isinstance(err, WrongKeyError), (pos, err)
        if pos < ref.HEADER_FIXED_LEN + 3:
            region = "fixed header fields"  # malformed, limit, truncated or corrupt: spec step 2
        elif pos in stanza_body or pos < header_len:
            region = "stanza body, padding, header_sha256, header_mac"
            assert isinstance(err, AuthenticationError), (pos, err)
        elif pos < footer_offset:
            region = "frames"
            assert isinstance(err, AuthenticationError), (pos, err)
            i = logical_at(info, pos)
            assert i is not None
            with pytest.raises(AuthenticationError):
                qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(i), key=KEY)
        elif pos < trailer:
            region = "footer"
            assert isinstance(err, AuthenticationError), (pos, err)
        elif pos < trailer + 16:
            region = "trailer footer_offset/footer_len"
            assert isinstance(err, AuthenticationError), (pos, err)
        else:
            region = "trailer magic"
            assert isinstance(err, TruncatedError), (pos, err)
        seen.setdefault(region, set()).add(type(err))
    assert len(seen) == 6


@given(data=st.data())
def test_bit_flip_random_position_and_bit(data):
    """The same property for any bit, on a ChaCha20 container with a key and a passphrase
    recipient, opened with the passphrase, with a short last block, on 1 or 2 workers."""
    pt = make_plaintext(5 * 48 + 5, "flip")
    c = _two_recipient_chacha()
    pos = data.draw(st.integers(0, len(c) - 1), label="pos")
    bit = data.draw(st.integers(0, 7), label="bit")
    workers = data.draw(st.sampled_from([1, 2]), label="workers")
    err = unpack_must_fail(flip(c, pos, bit), pt, passphrase="flip me", workers=workers)
    assert not isinstance(err, WrongKeyError)
    if pos >= ref.parse_header(c)["header_len"] and pos < len(c) - 8:
        assert isinstance(err, AuthenticationError)


_TWO_RECIPIENT: list[bytes] = []


def _two_recipient_chacha() -> bytes:
    if not _TWO_RECIPIENT:
        pt = make_plaintext(5 * 48 + 5, "flip")
        _TWO_RECIPIENT.append(
            pack_bytes(
                pt,
                key=KEY,
                passphrase="flip me",
                kdf="pbkdf2",
                kdf_params=PBKDF2_SMALL,
                block_size=48,
                cipher="chacha20-poly1305",
            )
        )
    return _TWO_RECIPIENT[0]


def test_failed_read_is_not_cached(box, info):
    """A random-access reader that hit a corrupt block keeps failing on it, and keeps serving the
    intact blocks correctly (no garbage enters its block cache)."""
    bad = flip(box, info["frame_offsets"][5] + ref.META_FRAME_LEN + 10, 2)  # data of block 5
    with qeltrix_v6.open(io.BytesIO(bad), key=KEY) as f:
        for _ in range(3):
            assert f.read(64) == PT[:64]
            for _ in range(2):
                f.seek(5 * BS)
                with pytest.raises(AuthenticationError):
                    f.read(1)
            f.seek(4 * BS + 10)
            with pytest.raises(AuthenticationError):
                f.read(BS)  # spans blocks 4 and 5
            f.seek(6 * BS)
            assert f.read() == PT[6 * BS :]
            for k in (9, 8, 7, 6, 4, 3, 2, 1, 0):
                f.seek(k * BS)
                assert f.read(BS) == PT[k * BS : (k + 1) * BS]
            f.seek(0)


# ---------------------------------------------------------------------------------- (b) swap


@pytest.mark.parametrize(("i", "j"), [(0, 1), (0, 9), (3, 7), (8, 9)])
def test_two_frames_swapped(box, info, i, j):
    fi, fj = frame(box, info, i), frame(box, info, j)
    assert len(fi) == len(fj)
    bad = put(put(box, info["frame_offsets"][i], fj), info["frame_offsets"][j], fi)
    assert len(bad) == len(box)
    assert isinstance(unpack_must_fail(bad), AuthenticationError)
    for k in (i, j):
        with pytest.raises(AuthenticationError):
            qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(k), key=KEY)
    # Only the moved blocks are affected: an untouched block still reads correctly.
    other = next(k for k in range(N_BLOCKS) if k not in (i, j))
    a, n = block_range(other)
    assert qeltrix_v6.seek_extract(io.BytesIO(bad), a, n, key=KEY) == PT[a : a + n]


def test_two_physically_adjacent_frames_swapped(box, info):
    order = sorted(range(N_BLOCKS), key=lambda k: info["frame_offsets"][k])
    i, j = order[4], order[5]
    bad = put(put(box, info["frame_offsets"][i], frame(box, info, j)), info["frame_offsets"][j], frame(box, info, i))
    assert isinstance(unpack_must_fail(bad), AuthenticationError)


# ---------------------------------------------------------------------------------- (c) move


@pytest.mark.parametrize("trio", [(0, 1, 2), (2, 5, 9), (9, 4, 0)])
def test_frame_moved_by_rotating_three(box, info, trio):
    a, b, c = trio
    fa, fb, fc = (frame(box, info, k) for k in trio)
    bad = put(box, info["frame_offsets"][b], fa)  # a moves to b's place,
    bad = put(bad, info["frame_offsets"][c], fb)  # b to c's,
    bad = put(bad, info["frame_offsets"][a], fc)  # c to a's.
    assert isinstance(unpack_must_fail(bad), AuthenticationError)
    for k in trio:
        with pytest.raises(AuthenticationError):
            qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(k), key=KEY)


# ---------------------------------------------------------------------------------- (d) splice


@pytest.mark.parametrize("i", [0, 4, 9])
def test_frame_spliced_from_container_with_same_key(box, info, i):
    """Another container with the same key and the SAME plaintext: the frame of the same logical
    block has the same length, block_index and pt_sha256, but another MK and container_id."""
    donor = pack_bytes(PT, block_size=BS)
    dinfo = ref.inspect(donor, key=KEY)
    f = frame(donor, dinfo, i)
    assert len(f) == frame_len(info, i)
    bad = put(box, info["frame_offsets"][i], f)
    assert isinstance(unpack_must_fail(bad), AuthenticationError)
    with pytest.raises(AuthenticationError):
        qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(i), key=KEY)


def _rng_with(prefix: list[bytes]):
    """An rng for ref.encode that returns the given byte strings first (container_id, MK), then
    fresh random bytes."""
    queue = list(prefix)

    def rng(n: int) -> bytes:
        if queue:
            out = queue.pop(0)
            assert len(out) == n
            return out
        return os.urandom(n)

    return rng


def test_frame_spliced_from_container_with_same_master_key():
    """Even a container sharing the MK (but not the container_id) cannot donate a frame: K_meta
    and the AEAD associated data are bound to container_id."""
    mk = os.urandom(32)
    a = ref.encode(PT, key=KEY, block_size=BS, rng=_rng_with([os.urandom(16), mk]))
    b = ref.encode(PT, key=KEY, block_size=BS, rng=_rng_with([os.urandom(16), mk]))
    ia, ib = ref.inspect(a, key=KEY), ref.inspect(b, key=KEY)
    assert ia["mk"] == ib["mk"] == mk
    assert unpack_bytes(a) == PT
    for i in (0, 5):
        bad = put(a, ia["frame_offsets"][i], frame(b, ib, i))
        assert isinstance(unpack_must_fail(bad), AuthenticationError)
        with pytest.raises(AuthenticationError):
            qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(i), key=KEY)


# ---------------------------------------------------------------------------------- (e) drop


@pytest.mark.parametrize("slot", [0, 4, 8])
def test_frame_dropped(box, info, slot):
    order = sorted(range(N_BLOCKS), key=lambda k: info["frame_offsets"][k])
    dropped = order[slot]
    later = order[slot + 1]  # stored after the dropped frame: its offset is now wrong
    off, n = info["frame_offsets"][dropped], frame_len(info, dropped)
    bad = box[:off] + box[off + n :]
    err = unpack_must_fail(bad)
    assert isinstance(err, IntegrityError)
    assert isinstance(err, AuthenticationError)  # the trailer no longer matches the file length
    with pytest.raises(IntegrityError):
        qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(later), key=KEY)
    with pytest.raises(IntegrityError):
        qeltrix_v6.seek_extract(io.BytesIO(bad), *block_range(dropped), key=KEY)

    # An attacker who also fixes up the trailer's footer_offset still fails: the footer's
    # associated data binds footer_offset.
    fo, fl = struct.unpack_from("<QQ", bad, len(bad) - ref.TRAILER_LEN)
    fixed = bad[: len(bad) - ref.TRAILER_LEN] + struct.pack("<QQ", fo - n, fl) + ref.TRAILER_MAGIC
    assert isinstance(unpack_must_fail(fixed), AuthenticationError)
    with pytest.raises(AuthenticationError):
        qeltrix_v6.seek_extract(io.BytesIO(fixed), *block_range(later), key=KEY)


def test_last_frame_dropped_with_footer_and_trailer_fixed_up(box, info):
    order = sorted(range(N_BLOCKS), key=lambda k: info["frame_offsets"][k])
    last = order[-1]
    off = info["frame_offsets"][last]
    footer = box[info["footer_offset"] : info["footer_offset"] + info["footer_len"]]
    bad = box[:off] + footer + struct.pack("<QQ", off, info["footer_len"]) + ref.TRAILER_MAGIC
    assert isinstance(unpack_must_fail(bad), AuthenticationError)


# ---------------------------------------------------------------------------------- (f) truncation


def test_truncation_at_every_byte(box, info):
    """Any cut removes the trailer: TruncatedError (an IntegrityError), except below the fixed
    header length, where the input is not recognisable as a container at all (spec step 1)."""
    for cut in range(len(box)):
        short = box[:cut]
        out = io.BytesIO()
        with pytest.raises(QeltrixError) as e:
            qeltrix_v6.unpack(io.BytesIO(short), out, key=KEY)
        assert out.getvalue() == b""
        if cut < ref.HEADER_FIXED_LEN:
            assert isinstance(e.value, MalformedError), (cut, e.value)
        else:
            assert isinstance(e.value, TruncatedError), (cut, e.value)
            assert issubclass(type(e.value), IntegrityError)


def test_truncation_at_block_boundaries_mid_block_footer_and_trailer(box, info, tmp_path):
    ends = sorted(off + frame_len(info, i) for i, off in enumerate(info["frame_offsets"]))
    boundaries = [info["header_len"], *ends]
    assert boundaries[-1] == info["footer_offset"]
    mid = [b + d for b in boundaries[:-1] for d in (1, ref.NONCE_LEN, ref.META_FRAME_LEN, ref.META_FRAME_LEN + 7)]
    footer = [info["footer_offset"] + d for d in (1, 12, info["footer_len"] - 1)]
    trailer = [len(box) - d for d in (24, 23, 16, 9, 8, 1)]
    for cut in boundaries + mid + footer + trailer:
        short = box[:cut]
        with pytest.raises(TruncatedError):
            unpack_bytes(short)
        with pytest.raises(TruncatedError):
            qeltrix_v6.seek_extract(io.BytesIO(short), 0, BS, key=KEY)
        with pytest.raises(TruncatedError):
            qeltrix_v6.open(io.BytesIO(short), key=KEY)
    # From a path too, and the failed unpack leaves no output behind.
    p = tmp_path / "cut.qltx"
    p.write_bytes(box[: boundaries[5]])
    with pytest.raises(TruncatedError):
        qeltrix_v6.unpack(p, tmp_path / "out.bin", key=KEY)
    assert [q.name for q in tmp_path.iterdir()] == ["cut.qltx"]


def test_truncation_at_block_boundary_with_trailer_reappended(box, info):
    """Cutting whole frames off and re-appending the old footer and trailer is detected."""
    ends = sorted(off + frame_len(info, i) for i, off in enumerate(info["frame_offsets"]))
    tail = box[info["footer_offset"] :]
    for cut in ends[:-1]:
        err = unpack_must_fail(box[:cut] + tail)
        assert isinstance(err, AuthenticationError)


# ---------------------------------------------------------------------------------- (g) wrong key


def test_wrong_key_is_wrong_key_error(box):
    with pytest.raises(WrongKeyError) as e:
        unpack_bytes(box, key=OTHER_KEY)
    assert not isinstance(e.value, IntegrityError)
    assert "key" in str(e.value)
    with pytest.raises(WrongKeyError):
        qeltrix_v6.seek_extract(io.BytesIO(box), 0, 10, key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        qeltrix_v6.open(io.BytesIO(box), key=OTHER_KEY)


@pytest.mark.parametrize("kdf", ["argon2id", "pbkdf2"])
def test_wrong_passphrase_is_wrong_key_error(kdf):
    params = {"argon2id": {"t_cost": 1, "m_cost_kib": 64, "lanes": 1}, "pbkdf2": PBKDF2_SMALL}[kdf]
    c = pack_bytes(PT, passphrase="right", kdf=kdf, kdf_params=params, block_size=BS)
    assert unpack_bytes(c, passphrase="right") == PT
    for wrong in ("wrong", "Right", "right ", "righ"):
        with pytest.raises(WrongKeyError) as e:
            unpack_bytes(c, passphrase=wrong)
        assert "passphrase" in str(e.value)
    # A key given for a passphrase-only container: a wrong-key error that says what is needed.
    with pytest.raises(WrongKeyError) as e:
        unpack_bytes(c, key=KEY)
    assert "passphrase" in str(e.value)


def test_passphrase_for_key_only_container(box):
    with pytest.raises(WrongKeyError) as e:
        unpack_bytes(box, passphrase="anything")
    assert "key" in str(e.value)


def test_wrong_key_is_distinct_from_corruption(box, info):
    # Corrupt data with the right key: authentication error, not "wrong key".
    bad = flip(box, info["frame_offsets"][3] + 50, 0)
    with pytest.raises(AuthenticationError):
        unpack_bytes(bad)
    # Corrupt wrapped MK (inside the key stanza): the checksum reports corruption before any
    # key is tried, whichever key is given.
    stanza_mk = info["stanza_area_end"] - 1
    bad = flip(box, stanza_mk, 3)
    for k in (KEY, OTHER_KEY):
        with pytest.raises(AuthenticationError):
            unpack_bytes(bad, key=k)
    # A corrupted MAC with the right key: authentication error.
    with pytest.raises(AuthenticationError):
        unpack_bytes(flip(box, info["header_len"] - 1, 7))
    assert not issubclass(WrongKeyError, IntegrityError)
    assert not issubclass(AuthenticationError, WrongKeyError)


# ---------------------------------------------------------------------------------- (h) nonces


def _metas(c: bytes, key: bytes = KEY) -> list[dict]:
    """Decrypted V6-C metadata of every frame, with the frame's meta_nonce."""
    info = ref.inspect(c, key=key)
    out = []
    for i in range(info["block_count"]):
        f = frame(c, info, i)
        meta_pt = ref.open_(
            info["cipher_id"], info["keys"]["meta"], f[:12], f[12 : ref.META_FRAME_LEN], info["container_id"]
        )
        assert meta_pt is not None
        block_index, _, _, _, cdk_salt, data_nonce, _ = struct.unpack("<QIB3s16s12s32s", meta_pt)
        assert block_index == i
        out.append({"meta_nonce": f[:12], "cdk_salt": cdk_salt, "data_nonce": data_nonce, "data_ct": f[104:]})
    footer_nonce = c[info["footer_offset"] : info["footer_offset"] + 12]
    return [*out, {"meta_nonce": footer_nonce, "cdk_salt": None, "data_nonce": None, "data_ct": None}]


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_nonce_uniqueness(cipher):
    pt = bytes(16 * 300)  # 300 identical blocks
    a = pack_bytes(pt, block_size=16, cipher=cipher)
    b = pack_bytes(pt, block_size=16, cipher=cipher)
    assert a != b
    ha, hb = ref.parse_header(a), ref.parse_header(b)
    assert ha["container_id"] != hb["container_id"]
    assert ha["stanzas"] != hb["stanzas"]  # fresh MK and wrap nonce
    ma, mb = _metas(a), _metas(b)
    # Within one container no two frames (nor the footer) share a meta_nonce under K_meta/K_index,
    # and no two blocks share a CDK salt or data nonce.
    for metas in (ma, mb):
        nonces = [m["meta_nonce"] for m in metas]
        assert len(set(nonces)) == len(nonces) == 301
        salts = [m["cdk_salt"] for m in metas[:-1]]
        assert len(set(salts)) == 300
        data_nonces = [m["data_nonce"] for m in metas[:-1]]
        assert len(set(data_nonces)) == 300
    # Across the two containers nothing repeats either.
    assert not {m["meta_nonce"] for m in ma} & {m["meta_nonce"] for m in mb}
    assert not {m["cdk_salt"] for m in ma[:-1]} & {m["cdk_salt"] for m in mb[:-1]}


# ---------------------------------------------------------------------------------- (i) identical blocks


def test_identical_plaintext_blocks_have_different_ciphertexts():
    pt = b"A" * BS * 8
    c = pack_bytes(pt, block_size=BS)
    metas = _metas(c)[:-1]
    data_cts = [m["data_ct"] for m in metas]
    assert len(set(data_cts)) == 8
    info = ref.inspect(c, key=KEY)
    frames = [frame(c, info, i) for i in range(8)]
    assert len(set(frames)) == 8
    # No 16-byte chunk of ciphertext repeats between any two frames.
    chunks = [f[k : k + 16] for f in frames for k in range(0, len(f) - 15, 16)]
    assert len(set(chunks)) == len(chunks)
    # Also across containers: packing the same block again gives another ciphertext.
    c2 = pack_bytes(pt, block_size=BS)
    assert not set(data_cts) & {m["data_ct"] for m in _metas(c2)[:-1]}
    assert unpack_bytes(c) == pt


def test_no_key_material_in_the_clear():
    pt = bytes(64 * 4)
    c = pack_bytes(pt, block_size=BS)
    info = ref.inspect(c, key=KEY)
    secrets = [KEY, info["mk"], *info["keys"].values()]
    for secret in secrets:
        assert secret not in c
    # Nor the plaintext, nor any 16-byte piece of a known plaintext.
    text = b"The quick brown fox jumps over the lazy dog. " * 20
    c = pack_bytes(text, block_size=BS)
    assert not any(text[k : k + 16] in c for k in range(0, len(text) - 16))


# ---------------------------------------------------------------------------------- key commitment


def test_header_commits_to_one_master_key():
    """A creator who adds a second recipient wrapping ANOTHER master key (and re-MACs the header
    under the first MK) cannot make the container open to different data: the second credential
    unwraps MK2, and header_mac does not verify under K_header(MK2)."""
    c = ref.encode(PT, key=KEY, block_size=BS)
    hdr = ref.parse_header(c)
    cid = hdr["container_id"]
    mk1 = ref.inspect(c, key=KEY)["mk"]
    mk2 = os.urandom(32)
    nonce = os.urandom(12)
    wrapped = ref.seal(1, ref.kek_key(OTHER_KEY, cid), nonce, mk2, cid + bytes([ref.KIND_KEY]))
    stanza = bytes([ref.KIND_KEY]) + struct.pack("<H", 60) + nonce + wrapped
    end = hdr["stanza_area_end"]
    body = bytearray(c[: hdr["header_len"] - 64])
    body[end : end + len(stanza)] = stanza
    struct.pack_into("<H", body, 42, 2)
    body = bytes(body)
    body += ref.sha256(body)
    header = body + ref.hmac_sha256(ref.derive_keys(mk1, cid)["header"], body)
    forged = header + c[hdr["header_len"] :]
    assert ref.parse_header(forged)["recipient_count"] == 2
    assert unpack_bytes(forged, key=KEY) == PT  # the genuine MK still opens it
    with pytest.raises(AuthenticationError):
        unpack_bytes(forged, key=OTHER_KEY)
    with pytest.raises(AuthenticationError):
        qeltrix_v6.seek_extract(io.BytesIO(forged), 0, 10, key=OTHER_KEY)
