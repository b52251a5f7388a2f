"""Hostile and malformed input, resource limits (docs/FORMAT.md sections 8 and 9), atomic
outputs and argument checking."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import qeltrix_v6
import reference_decoder as ref
from conftest import ARGON2_SMALL, KEY, OTHER_KEY, PBKDF2_SMALL, make_plaintext, pack_bytes, unpack_bytes
from hypothesis import given
from hypothesis import strategies as st
from qeltrix_v6 import (
    AuthenticationError,
    LimitExceededError,
    MalformedError,
    QeltrixError,
    QeltrixIOError,
    TruncatedError,
    WrongKeyError,
)

PT = make_plaintext(3 * 64 + 10, "malformed")
PW = "hostile"
TEMP_SUFFIX = ".qeltrix-tmp"
# Liveness, not speed: a hostile length that made a reader loop or allocate without bound
# fails here instead of stalling the run (pyproject's default timeout is 300 s).
pytestmark = pytest.mark.timeout(60)

# Offsets of the fixed header fields (FORMAT.md section 3).
OFF_VERSION, OFF_HEADER_LEN, OFF_FLAGS, OFF_CIPHER, OFF_RESERVED = 8, 10, 14, 16, 17
OFF_BLOCK_SIZE, OFF_PERM_WINDOW, OFF_RECIPIENTS = 18, 22, 42
OFF_STANZA = 44  # kind u8 || body_len u16 || body
OFF_BODY = OFF_STANZA + 3


@pytest.fixture(scope="module")
def key_box() -> bytes:
    return pack_bytes(PT, block_size=64)


@pytest.fixture(scope="module")
def argon_box() -> bytes:
    return pack_bytes(PT, passphrase=PW, kdf_params=ARGON2_SMALL, block_size=64)


@pytest.fixture(scope="module")
def pbkdf2_box() -> bytes:
    return pack_bytes(PT, passphrase=PW, kdf="pbkdf2", kdf_params=PBKDF2_SMALL, block_size=64)


@pytest.fixture(scope="module")
def key_then_argon_box() -> bytes:
    return pack_bytes(PT, key=KEY, passphrase=PW, kdf_params=ARGON2_SMALL, block_size=64)


def patch(c: bytes, fmt: str, off: int, value: int, *, rehash: bool = True) -> bytes:
    """Overwrite a little-endian field and (by default) fix header_sha256 so that a reader sees
    the hostile value rather than a checksum mismatch."""
    b = bytearray(c)
    struct.pack_into("<" + fmt, b, off, value)
    return ref.rehash_header(bytes(b)) if rehash else bytes(b)


def quick_failure(c: bytes, cls: type[BaseException] = QeltrixError, **cred: object) -> QeltrixError:
    """unpack, seek_extract and open all fail with ``cls`` (a QeltrixError). A hostile length
    that made them loop or allocate without bound fails the module's timeout instead."""
    if not cred:
        cred = {"key": KEY}
    calls: list[Callable[[], object]] = [
        lambda: qeltrix_v6.unpack(io.BytesIO(c), io.BytesIO(), **cred),
        lambda: qeltrix_v6.seek_extract(io.BytesIO(c), 0, 100, **cred),
        lambda: qeltrix_v6.open(io.BytesIO(c), **cred),
    ]
    errors = []
    for call in calls:
        with pytest.raises(QeltrixError) as e:
            call()
        assert isinstance(e.value, cls), repr(e.value)
        assert str(e.value), "an error without a message"
        errors.append(e.value)
    assert len({type(e) for e in errors}) == 1
    return errors[0]


# ---------------------------------------------------------------------------------- not a container


def test_empty_file(tmp_path):
    quick_failure(b"", MalformedError)
    quick_failure(b"", MalformedError, passphrase=PW)
    p = tmp_path / "empty.qltx"
    p.write_bytes(b"")
    with pytest.raises(MalformedError):
        qeltrix_v6.unpack(p, tmp_path / "out", key=KEY)
    assert [q.name for q in tmp_path.iterdir()] == ["empty.qltx"]


@pytest.mark.parametrize("n", [1, 7, 8, 24, 43, 44, 45, 107, 108, 4095, 4096, 4097, 10_000, 100_000])
def test_random_bytes_of_many_sizes(n):
    c = make_plaintext(n, "random container")
    assert c[:8] != ref.MAGIC
    quick_failure(c, MalformedError)


@given(st.binary(max_size=5000))
def test_random_bytes_hypothesis(c):
    quick_failure(c, QeltrixError)


@given(tail=st.binary(max_size=300), header_len=st.sampled_from([0, 107, 108, 4096, 2**20, 2**20 + 1, 2**32 - 1]))
def test_magic_then_garbage(tail, header_len):
    c = ref.MAGIC + struct.pack("<HI", 1, header_len) + tail
    quick_failure(c, QeltrixError)


def test_only_a_trailer():
    trailer = struct.pack("<QQ", 0, 48) + ref.TRAILER_MAGIC
    quick_failure(trailer, MalformedError)
    quick_failure(trailer * 10, MalformedError)


def test_unsupported_version_and_flags(key_box):
    quick_failure(patch(key_box, "H", OFF_VERSION, 2), MalformedError)
    quick_failure(patch(key_box, "H", OFF_FLAGS, 0x8001), MalformedError)
    quick_failure(patch(key_box, "B", OFF_CIPHER, 3), MalformedError)
    quick_failure(patch(key_box, "B", OFF_RESERVED, 1), MalformedError)
    quick_failure(patch(key_box, "I", OFF_PERM_WINDOW, 0), MalformedError)  # PERMUTED set, window 0


def test_header_only(key_box):
    """A complete, valid header and nothing else: the trailer is missing."""
    quick_failure(key_box[:4096], TruncatedError)
    quick_failure(key_box[:4096] + bytes(100), TruncatedError)
    # The trailer of another file appended: it does not match this file's length.
    quick_failure(key_box[:4096] + key_box[-24:], AuthenticationError)


# ---------------------------------------------------------------------------------- hostile header


@pytest.mark.parametrize(
    ("header_len", "cls"),
    [
        (0, MalformedError),
        (107, MalformedError),
        (2**20 + 1, LimitExceededError),
        (2**31, LimitExceededError),
        (2**32 - 1, LimitExceededError),
        (2**20, TruncatedError),  # allowed, but larger than the file
        (8192, TruncatedError),
    ],
)
def test_hostile_header_len(key_box, header_len, cls):
    c = patch(key_box, "I", OFF_HEADER_LEN, header_len, rehash=False)
    quick_failure(c, cls)
    quick_failure(c, cls, passphrase=PW)


def test_header_len_smaller_than_the_stanzas(key_box):
    # 108 bytes leave room for the fixed part only: the key stanza runs past the stanza area.
    quick_failure(patch(key_box, "I", OFF_HEADER_LEN, 108, rehash=False), MalformedError)


@pytest.mark.parametrize("count", [65, 1000, 2**16 - 1])
def test_hostile_recipient_count(key_box, argon_box, count):
    for c, cred in ((key_box, {"key": KEY}), (argon_box, {"passphrase": PW})):
        quick_failure(patch(c, "H", OFF_RECIPIENTS, count), LimitExceededError, **cred)


def test_zero_recipients_and_reserved_kind(key_box):
    quick_failure(patch(key_box, "H", OFF_RECIPIENTS, 0), MalformedError)
    quick_failure(patch(key_box, "B", OFF_STANZA, 0), MalformedError)
    # Two recipients declared, one present: stanza 2 is read from zero padding (kind 0).
    quick_failure(patch(key_box, "H", OFF_RECIPIENTS, 2), MalformedError)


@pytest.mark.parametrize(
    ("kind", "body_len", "cls"),
    [
        (0x7F, 4096 - 64 - OFF_BODY + 1, MalformedError),  # unknown kind, body past the stanza area
        (0x7F, 4096, MalformedError),  # MAX_STANZA_BODY_LEN, but past the header
        (0x7F, 4097, LimitExceededError),
        (0x7F, 0xFFFF, LimitExceededError),
        (ref.KIND_KEY, 61, MalformedError),  # known kind with the wrong body_len
        (ref.KIND_KEY, 0, MalformedError),
        (ref.KIND_KEY, 0xFFFF, MalformedError),
    ],
)
def test_hostile_stanza_body_len(key_box, kind, body_len, cls):
    c = patch(patch(key_box, "B", OFF_STANZA, kind), "H", OFF_STANZA + 1, body_len)
    quick_failure(c, cls)
    quick_failure(c, cls, passphrase=PW)


def test_unknown_stanza_kind_is_skipped_not_fatal(key_box):
    """Kind 0x7F with a valid length is skipped: with only that stanza, no credential opens it."""
    c = patch(key_box, "B", OFF_STANZA, 0x7F)
    quick_failure(c, WrongKeyError)


@pytest.mark.parametrize(
    ("block_size", "cls"),
    [(0, MalformedError), (15, MalformedError), (2**26 + 1, LimitExceededError), (2**32 - 1, LimitExceededError)],
)
def test_hostile_block_size(key_box, block_size, cls):
    quick_failure(patch(key_box, "I", OFF_BLOCK_SIZE, block_size), cls)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("m_cost_kib", 2**31),
        ("m_cost_kib", 2**32 - 1),
        ("m_cost_kib", 2**20 + 1),
        ("m_cost_kib", 7),  # below 8 * lanes
        ("t_cost", 1000),
        ("t_cost", 17),
        ("t_cost", 0),
        ("lanes", 0),
        ("lanes", 17),
        ("lanes", 2**32 - 1),
    ],
)
def test_hostile_argon2id_params(argon_box, key_then_argon_box, field, value):
    """Rejected before any KDF runs. Costly-but-in-range partners are set so that running the
    KDF would take far longer than the time bound (t_cost 1000 with 64 MiB)."""
    offsets = {"t_cost": 16, "m_cost_kib": 20, "lanes": 24}

    def hostile(c: bytes, stanza: int) -> bytes:
        if field == "t_cost":
            c = patch(c, "I", stanza + 3 + offsets["m_cost_kib"], 65536)
        c = patch(c, "I", stanza + 3 + offsets[field], value)
        return c

    maximum = {"t_cost": 16, "m_cost_kib": 2**20, "lanes": 16}[field]
    # Over a limit: LimitExceededError; below a minimum: at least MalformedError.
    cls = LimitExceededError if value > maximum else MalformedError
    quick_failure(hostile(argon_box, OFF_STANZA), cls, passphrase=PW)
    # Every known stanza is checked, even when the credential would open another one first.
    second = OFF_STANZA + 3 + 60
    assert key_then_argon_box[second] == ref.KIND_ARGON2ID
    quick_failure(hostile(key_then_argon_box, second), cls, key=KEY)
    quick_failure(hostile(key_then_argon_box, second), cls, passphrase=PW)


@pytest.mark.parametrize("iterations", [2**32 - 1, 10_000_001, 999, 0])
def test_hostile_pbkdf2_iterations(pbkdf2_box, iterations):
    c = patch(pbkdf2_box, "I", OFF_BODY + 16, iterations)
    err = quick_failure(c, MalformedError, passphrase=PW)
    assert isinstance(err, LimitExceededError)
    quick_failure(c, MalformedError, key=KEY)


def test_hostile_values_without_rehash_are_still_rejected_quickly(argon_box):
    """Same hostile Argon2id cost, checksum left stale: still no KDF run."""
    c = patch(argon_box, "I", OFF_BODY + 20, 2**31, rehash=False)
    quick_failure(c, QeltrixError, passphrase=PW)


# ---------------------------------------------------------------------------------- hostile trailer


@pytest.mark.parametrize(
    "trailer",
    [
        ("footer_len", 2**63),
        ("footer_len", 2**64 - 1),
        ("footer_len", "file length"),
        ("footer_len", 0),
        ("footer_len", 49),
        ("footer_offset", 2**64 - 1),
        ("footer_offset", 2**63),
        ("footer_offset", 0),
        ("both", "whole file"),
    ],
    ids=str,
)
def test_hostile_trailer(key_box, trailer):
    field, value = trailer
    fo, fl = struct.unpack_from("<QQ", key_box, len(key_box) - 24)
    if value == "file length":
        value = len(key_box)
    if field == "footer_len":
        fl = value
    elif field == "footer_offset":
        fo = value
    else:  # a footer spanning the whole file, header included
        fo, fl = 0, len(key_box) - 24
    c = key_box[:-24] + struct.pack("<QQ", fo, fl) + ref.TRAILER_MAGIC
    quick_failure(c, AuthenticationError)


def test_trailer_magic_damaged(key_box):
    c = key_box[:-1] + b"\0"
    quick_failure(c, TruncatedError)


# ---------------------------------------------------------------------------------- hostile index


def reseal_index(c: bytes, edit: Callable[[bytearray], None]) -> bytes:
    """Re-encrypt the footer with an edited index (a hostile writer who holds the key)."""
    info = ref.inspect(c, key=KEY)
    fo, fl = info["footer_offset"], info["footer_len"]
    aad = info["container_id"] + ref.u64le(fo) + ref.u64le(fl)
    nonce = c[fo : fo + 12]
    index_pt = ref.open_(info["cipher_id"], info["keys"]["index"], nonce, c[fo + 12 : fo + fl], aad)
    assert index_pt is not None
    b = bytearray(index_pt)
    edit(b)
    footer = nonce + ref.seal(info["cipher_id"], info["keys"]["index"], nonce, bytes(b), aad)
    assert len(footer) == fl
    return c[:fo] + footer + c[fo + fl :]


def _entry(i: int) -> int:
    return 20 + 12 * i


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: struct.pack_into("<Q", b, 0, 2**40),  # block_count
        lambda b: struct.pack_into("<Q", b, 8, 2**64 - 1),  # pt_total_len
        lambda b: struct.pack_into("<I", b, 16, 2),  # unknown index flag
        lambda b: struct.pack_into("<I", b, 16, 1),  # INCOMPLETE, yet the last block is FINAL
        lambda b: struct.pack_into("<Q", b, _entry(1), 2**64 - 1),  # frame_offset overflows
        lambda b: struct.pack_into("<Q", b, _entry(1), 0),  # frame inside the header
        lambda b: struct.pack_into("<I", b, _entry(0) + 8, 0),  # empty block
        lambda b: struct.pack_into("<I", b, _entry(0) + 8, 2**32 - 1),  # pt_len > block_size
        lambda b: struct.pack_into("<Q", b, _entry(2), struct.unpack_from("<Q", b, _entry(0))[0]),  # aliasing
    ],
    ids=[
        "block_count",
        "pt_total_len",
        "unknown_flag",
        "incomplete",
        "offset_overflow",
        "offset_in_header",
        "pt_len_0",
        "pt_len_huge",
        "aliased_frames",
    ],
)
def test_hostile_index_under_a_valid_key(key_box, edit):
    c = reseal_index(key_box, edit)
    out = io.BytesIO()
    with pytest.raises(AuthenticationError):
        qeltrix_v6.unpack(io.BytesIO(c), out, key=KEY)
    assert out.getvalue() == PT[: len(out.getvalue())]
    with pytest.raises(AuthenticationError):
        qeltrix_v6.seek_extract(io.BytesIO(c), 0, len(PT), key=KEY)


# ---------------------------------------------------------------------------------- hostile frames


def rewrite_block(
    c: bytes,
    i: int,
    *,
    meta_flags: int | None = None,
    reserved: bytes | None = None,
    pt: bytes | None = None,
    keep_sha: bool = False,
) -> bytes:
    """Re-seal logical block i with edited V6-C metadata and/or plaintext (a hostile writer who
    holds the key). With keep_sha, the metadata keeps the ORIGINAL pt_sha256 (and the CDK is
    derived from it), so only the reader's SHA-256 check can catch the substitution."""
    info = ref.inspect(c, key=KEY)
    cid, cipher, keys = info["container_id"], info["cipher_id"], info["keys"]
    off = info["frame_offsets"][i]
    n = ref.META_FRAME_LEN + info["pt_lens"][i] + ref.TAG_LEN
    f = c[off : off + n]
    meta_nonce = f[:12]
    meta_pt = ref.open_(cipher, keys["meta"], meta_nonce, f[12 : ref.META_FRAME_LEN], cid)
    assert meta_pt is not None
    block_index, pt_len, flags, res, salt, data_nonce, sha = struct.unpack("<QIB3s16s12s32s", meta_pt)
    old_pt = ref.decode_block(c, info, i)
    new_flags = flags if meta_flags is None else meta_flags
    new_res = res if reserved is None else reserved
    new_pt = old_pt if pt is None else pt
    assert len(new_pt) == pt_len
    new_sha = sha if keep_sha else ref.sha256(new_pt)
    cdk = ref.derive_cdk(info["mk"], cid, block_index, new_sha, salt)
    aad = cid + ref.u64le(block_index) + ref.u32(pt_len) + ref.u8(new_flags)
    data_ct = ref.seal(cipher, cdk, data_nonce, new_pt, aad)
    new_meta = struct.pack("<QIB3s16s12s32s", block_index, pt_len, new_flags, new_res, salt, data_nonce, new_sha)
    frame = meta_nonce + ref.seal(cipher, keys["meta"], meta_nonce, new_meta, cid) + data_ct
    assert len(frame) == n
    return c[:off] + frame + c[off + n :]


def test_rewrite_block_helper_is_faithful(key_box):
    assert unpack_bytes(rewrite_block(key_box, 1)) == PT


@pytest.mark.parametrize(
    ("what", "kwargs"),
    [
        ("FINAL cleared on the last block (a cut stream posing as complete)", {"block": -1, "meta_flags": 0}),
        ("FINAL set on a middle block", {"block": 1, "meta_flags": 1}),
        ("unknown meta_flags bit", {"block": 0, "meta_flags": 2}),
        ("reserved metadata bytes not zero", {"block": 2, "reserved": b"\0\1\0"}),
        ("plaintext does not match pt_sha256", {"block": 0, "pt": b"\0" * 64, "keep_sha": True}),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_step_7_checks(key_box, what, kwargs):
    kwargs = dict(kwargs)
    block = kwargs.pop("block") % 4
    c = rewrite_block(key_box, block, **kwargs)
    out = io.BytesIO()
    with pytest.raises(AuthenticationError):
        qeltrix_v6.unpack(io.BytesIO(c), out, key=KEY)
    assert out.getvalue() == PT[: len(out.getvalue())]
    a = 64 * block
    with pytest.raises(AuthenticationError):
        qeltrix_v6.seek_extract(io.BytesIO(c), a, 1, key=KEY)


def test_incomplete_index_without_final_block_is_valid_but_never_a_clean_end(key_box):
    """A recovered stream (FORMAT.md section 6): INCOMPLETE set and no FINAL block is valid,
    and every block reads; but a read that reaches its end raises TruncatedError unless the
    caller opts in (FORMAT.md section 8), so a cut is never mistaken for the whole data."""
    c = rewrite_block(key_box, 3, meta_flags=0)
    c = reseal_index(c, lambda b: struct.pack_into("<I", b, 16, 1))
    assert ref.decode(c, key=KEY) == PT
    out = io.BytesIO()
    with pytest.raises(TruncatedError, match="INCOMPLETE"):
        qeltrix_v6.unpack(io.BytesIO(c), out, key=KEY)
    assert out.getvalue() == b""  # refused before any byte was written
    with pytest.warns(qeltrix_v6.IncompleteContainerWarning):
        qeltrix_v6.unpack(io.BytesIO(c), out, key=KEY, allow_incomplete=True)
    assert out.getvalue() == PT
    # Bytes that are there read normally; asking past them is refused.
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 50, 100, key=KEY) == PT[50:150]
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 0, len(PT), key=KEY) == PT
    with pytest.raises(TruncatedError):
        qeltrix_v6.seek_extract(io.BytesIO(c), 150, 100, key=KEY)
    with qeltrix_v6.open(io.BytesIO(c), key=KEY) as f:
        assert f.read(len(PT)) == PT
        with pytest.raises(TruncatedError):
            f.read(1)
    with qeltrix_v6.open(io.BytesIO(c), key=KEY) as f, pytest.raises(TruncatedError):
        f.read()
    with (
        qeltrix_v6.open(io.BytesIO(c), key=KEY, allow_incomplete=True) as f,
        pytest.warns(qeltrix_v6.IncompleteContainerWarning),
    ):
        assert f.read() == PT


# ---------------------------------------------------------------------------------- resource use


_MEMORY_PROBE = """
import io, resource, sys
sys.path.insert(0, {tests!r})
import reference_decoder as ref
import qeltrix_v6
key = bytes(32)
c = ref.encode(b"tiny", key=key, block_size=2**26)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = io.BytesIO()
qeltrix_v6.unpack(io.BytesIO(c), out, key=key, workers={workers})
assert out.getvalue() == b"tiny"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(c), (after - before) // 1024)
"""


def test_memory_is_bounded_by_the_data_not_the_declared_block_size():
    """A 4 KiB container whose header declares block_size = 64 MiB (the largest allowed) holds a
    4-byte block. FORMAT.md section 9 budgets "one block per worker"; unpacking it with two
    workers must not grow the process by more than 2 blocks + 2 frames (256 MiB) -- the index,
    read before any block buffer is needed, says no block exceeds 4 bytes."""
    code = _MEMORY_PROBE.format(tests=str(Path(__file__).resolve().parent), workers=2)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    size, grown_mib = map(int, r.stdout.split())
    assert size < 5000
    assert grown_mib < 256, f"unpacking a {size}-byte container grew the process by {grown_mib} MiB"


# ---------------------------------------------------------------------------------- fuzzed edits


@given(data=st.data())
def test_random_edits_never_crash(key_box, data):
    c = bytearray(key_box)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["overwrite", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(c)))
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        if kind == "overwrite":
            c[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            c[pos:pos] = chunk
        else:
            del c[pos : pos + len(chunk)]
    c = bytes(c)
    if c == key_box:
        return
    out = io.BytesIO()
    try:
        n = qeltrix_v6.unpack(io.BytesIO(c), out, key=KEY)
    except QeltrixError as e:
        assert not isinstance(e, WrongKeyError)
        assert out.getvalue() == PT[: len(out.getvalue())]
    else:  # an edit that did not change anything the reader uses
        assert (n, out.getvalue()) == (len(PT), PT)


# ---------------------------------------------------------------------------------- atomic outputs


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_wrong_key_unpack_to_path_leaves_nothing(key_box, tmp_path):
    src = tmp_path / "box.qltx"
    src.write_bytes(key_box)
    out = tmp_path / "out.bin"
    with pytest.raises(WrongKeyError):
        qeltrix_v6.unpack(src, out, key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        qeltrix_v6.unpack(src, out, passphrase="not it")
    assert leftovers(tmp_path) == ["box.qltx"]
    assert not list(tmp_path.glob("*" + TEMP_SUFFIX))


@pytest.mark.parametrize("workers", [1, 2])
def test_tampered_unpack_to_path_leaves_nothing(tmp_path, workers):
    pt = make_plaintext(64 * 40, "tamper")
    c = pack_bytes(pt, block_size=64, permute=False)
    info = ref.inspect(c, key=KEY)
    last = info["frame_offsets"][-1]
    bad = c[: last + 120] + bytes([c[last + 120] ^ 1]) + c[last + 121 :]  # data of the last block
    src = tmp_path / "box.qltx"
    src.write_bytes(bad)
    out = tmp_path / "out.bin"
    with pytest.raises(AuthenticationError):
        qeltrix_v6.unpack(src, out, key=KEY, workers=workers)
    assert leftovers(tmp_path) == ["box.qltx"]


def test_failed_unpack_keeps_an_existing_output(key_box, tmp_path):
    src = tmp_path / "box.qltx"
    src.write_bytes(key_box[:-5])
    out = tmp_path / "out.bin"
    out.write_bytes(b"precious")
    with pytest.raises(TruncatedError):
        qeltrix_v6.unpack(src, out, key=KEY)
    assert out.read_bytes() == b"precious"
    assert leftovers(tmp_path) == ["box.qltx", "out.bin"]


def test_overwrite_false_refuses_an_existing_output(key_box, tmp_path):
    dst = tmp_path / "exists"
    dst.write_bytes(b"keep me")
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.pack(io.BytesIO(PT), dst, key=KEY, overwrite=False)
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.unpack(io.BytesIO(key_box), dst, key=KEY, overwrite=False)
    assert dst.read_bytes() == b"keep me"
    assert leftovers(tmp_path) == ["exists"]


class FailingSource(io.RawIOBase):
    """Yields ``limit`` bytes in small reads, then raises OSError."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if self.done >= self.limit:
            raise OSError(5, "simulated read error")
        n = min(len(b), self.limit - self.done, 100)
        b[:n] = b"\x5a" * n
        self.done += n
        return n


@pytest.mark.parametrize("limit", [0, 1, 1000, 50_000])
def test_pack_from_failing_source_leaves_nothing(tmp_path, limit):
    dst = tmp_path / "box.qltx"
    with pytest.raises(OSError, match="simulated read error"):
        qeltrix_v6.pack(FailingSource(limit), dst, key=KEY, block_size=64)
    assert leftovers(tmp_path) == []


def test_pack_failure_keeps_an_existing_output(tmp_path):
    dst = tmp_path / "box.qltx"
    dst.write_bytes(b"old container")
    with pytest.raises(OSError):
        qeltrix_v6.pack(FailingSource(5000), dst, key=KEY, block_size=64)
    assert dst.read_bytes() == b"old container"
    assert leftovers(tmp_path) == ["box.qltx"]


def test_interrupt_leaves_no_debris(key_box, tmp_path):
    def interrupt(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qeltrix_v6.pack(
            io.BytesIO(make_plaintext(100_000, "ctrl-c")),
            tmp_path / "a.qltx",
            key=KEY,
            block_size=64,
            progress=interrupt,
        )
    src = tmp_path / "box.qltx"
    src.write_bytes(key_box)
    with pytest.raises(KeyboardInterrupt):
        qeltrix_v6.unpack(src, tmp_path / "out.bin", key=KEY, progress=interrupt)
    assert leftovers(tmp_path) == ["box.qltx"]


class SlowSource(io.RawIOBase):
    """``total`` random bytes in reads of at most ``size`` bytes, each after a short sleep."""

    def __init__(self, total: int, size: int, delay: float) -> None:
        super().__init__()
        self.left = total
        self.size = size
        self.delay = delay
        self.data = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if self.left == 0:
            return 0
        time.sleep(self.delay)
        n = min(len(b), self.size, self.left)
        chunk = os.urandom(n)
        b[:n] = chunk
        self.data += chunk
        self.left -= n
        return n


def test_pack_never_exposes_a_partial_file(tmp_path):
    """While pack runs, the final name either does not exist or holds the complete container
    (it appears by an atomic rename, after the whole input was read)."""
    dst = tmp_path / "box.qltx"
    src = SlowSource(total=2000, size=50, delay=0.005)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(qeltrix_v6.pack(src, dst, key=KEY, block_size=64)))
    thread.start()
    saw_temp = False
    snapshots: list[bytes] = []
    while thread.is_alive():
        if dst.exists():
            # Checked after seeing the file: the source was already exhausted when it appeared.
            assert src.left == 0, "the final name appeared before the whole input was read"
            snapshots.append(dst.read_bytes())
        else:
            saw_temp = saw_temp or any(p.name.endswith(TEMP_SUFFIX) for p in tmp_path.iterdir())
        time.sleep(0.002)
    thread.join()
    assert result and isinstance(result[0], qeltrix_v6.PackResult)
    assert saw_temp, "pack should write to a temporary file beside the target"
    assert leftovers(tmp_path) == ["box.qltx"]
    assert len(src.data) == 2000
    for snap in [*snapshots, dst.read_bytes()]:
        assert unpack_bytes(snap) == bytes(src.data)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_no_file_descriptor_leak_on_errors(key_box, tmp_path):
    good = tmp_path / "good.qltx"
    good.write_bytes(key_box)
    cut = tmp_path / "cut.qltx"
    cut.write_bytes(key_box[:-30])
    out = tmp_path / "out.bin"

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def attempt() -> None:
        for src, k, cls in ((good, OTHER_KEY, WrongKeyError), (cut, KEY, TruncatedError)):
            with pytest.raises(cls):
                qeltrix_v6.unpack(src, out, key=k)
            with pytest.raises(cls):
                qeltrix_v6.seek_extract(src, 0, 10, key=k)
            with pytest.raises(cls):
                qeltrix_v6.open(src, key=k)
        with qeltrix_v6.open(good, key=KEY) as f:
            assert f.read(5) == PT[:5]
        assert qeltrix_v6.seek_extract(good, 3, 4, key=KEY) == PT[3:7]

    attempt()  # warm-up: lazily opened descriptors (random device, thread pools) are not leaks
    before = fds()
    for _ in range(30):
        attempt()
    assert fds() == before
    assert leftovers(tmp_path) == ["cut.qltx", "good.qltx"]


# ---------------------------------------------------------------------------------- I/O errors, arguments


def test_nonexistent_input_is_io_error(tmp_path):
    missing = tmp_path / "missing.qltx"
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.pack(missing, tmp_path / "out.qltx", key=KEY)
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.unpack(missing, tmp_path / "out.bin", key=KEY)
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.seek_extract(missing, 0, 1, key=KEY)
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.open(missing, key=KEY)
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.unpack(tmp_path, tmp_path / "out.bin", key=KEY)  # a directory
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.pack(tmp_path, tmp_path / "out.qltx", key=KEY)
    with pytest.raises(QeltrixIOError):
        qeltrix_v6.pack(io.BytesIO(b"x"), tmp_path / "no" / "such" / "dir.qltx", key=KEY)
    assert issubclass(QeltrixIOError, OSError)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": bytes(31)},
        {"key": bytes(33)},
        {"key": "0" * 32},
        {},
        {"key": None, "passphrase": None},
        {"passphrase": ""},
        {"key": KEY, "block_size": 8},
        {"key": KEY, "block_size": 15},
        {"key": KEY, "block_size": 0},
        {"key": KEY, "block_size": 2**26 + 1},
        {"key": KEY, "cipher": "aes-128-gcm"},
        {"key": KEY, "cipher": ""},
        {"passphrase": "pw", "kdf": "scrypt"},
    ],
    ids=str,
)
def test_bad_pack_arguments_are_value_errors(tmp_path, kwargs):
    with pytest.raises(ValueError):
        qeltrix_v6.pack(io.BytesIO(b"data"), tmp_path / "box.qltx", **kwargs)
    with pytest.raises(ValueError):
        qeltrix_v6.open(tmp_path / "w.qltx", "wb", **kwargs).close()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs", [{"key": bytes(31)}, {}, {"passphrase": ""}], ids=str)
def test_bad_reader_arguments_are_value_errors(key_box, kwargs):
    with pytest.raises(ValueError):
        qeltrix_v6.unpack(io.BytesIO(key_box), io.BytesIO(), **kwargs)
    with pytest.raises(ValueError):
        qeltrix_v6.seek_extract(io.BytesIO(key_box), 0, 1, **kwargs)
    with pytest.raises(ValueError):
        qeltrix_v6.open(io.BytesIO(key_box), **kwargs)


@pytest.mark.parametrize("workers", [-1, -8])
def test_negative_workers_is_a_value_error(key_box, workers):
    with pytest.raises(ValueError):
        qeltrix_v6.pack(io.BytesIO(b"data"), io.BytesIO(), key=KEY, workers=workers)
    with pytest.raises(ValueError):
        qeltrix_v6.unpack(io.BytesIO(key_box), io.BytesIO(), key=KEY, workers=workers)


class FailingSink(io.RawIOBase):
    """Accepts ``limit`` bytes, then raises OSError (a full disk, a closed socket)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.got = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        n = len(memoryview(b))
        if self.got + n > self.limit:
            raise OSError(28, "simulated disk full")
        self.got += n
        return n


def _in_thread(fn: Callable[[], object], timeout: float = 20.0) -> BaseException | None:
    """Run fn in a thread; fail the test if it hangs. Returns what it raised."""
    box: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            box.append(e)
        else:
            box.append(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the pipeline hung after its sink failed"
    return box[0]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("limit", [0, 10, 5000, 50_000])
def test_failing_sink_raises_and_does_not_hang(workers, limit):
    pt = make_plaintext(64 * 300, "sink")
    c = pack_bytes(pt, block_size=64)
    err = _in_thread(
        lambda: qeltrix_v6.pack(io.BytesIO(pt), FailingSink(limit), key=KEY, block_size=64, workers=workers)
    )
    assert isinstance(err, OSError) and "simulated disk full" in str(err)
    if limit < len(pt):
        err = _in_thread(lambda: qeltrix_v6.unpack(io.BytesIO(c), FailingSink(limit), key=KEY, workers=workers))
        assert isinstance(err, OSError) and "simulated disk full" in str(err)


def test_bad_open_mode(key_box):
    for mode in ("r", "w", "ab", "rb+"):
        with pytest.raises(ValueError):
            qeltrix_v6.open(io.BytesIO(key_box), mode, key=KEY)


@pytest.mark.parametrize(
    ("kdf", "params"),
    [
        ("pbkdf2", {"iterations": 999}),
        ("pbkdf2", {"iterations": 0}),
        ("argon2id", {"t_cost": 0, "m_cost_kib": 64, "lanes": 1}),
        ("argon2id", {"t_cost": 1, "m_cost_kib": 64, "lanes": 0}),
        ("argon2id", {"t_cost": 17, "m_cost_kib": 64, "lanes": 1}),
        ("argon2id", {"t_cost": 1, "m_cost_kib": 7, "lanes": 1}),
    ],
    ids=str,
)
def test_pack_rejects_kdf_params_outside_the_limits(tmp_path, kdf, params):
    """A writer must not produce a container its own reader refuses (FORMAT.md section 9): KDF
    parameters outside the limits are a ValueError, and nothing is written."""
    with pytest.raises(ValueError):
        qeltrix_v6.pack(io.BytesIO(b"data"), tmp_path / "box.qltx", passphrase="pw", kdf=kdf, kdf_params=params)
    assert leftovers(tmp_path) == []


def test_pack_accepts_kdf_params_at_the_limits():
    for params in ({"t_cost": 1, "m_cost_kib": 8, "lanes": 1}, {"t_cost": 1, "m_cost_kib": 16, "lanes": 2}):
        c = pack_bytes(b"edge", passphrase="pw", kdf_params=params)
        assert unpack_bytes(c, passphrase="pw") == b"edge"
    c = pack_bytes(b"edge", passphrase="pw", kdf="pbkdf2", kdf_params={"iterations": 1000})
    assert unpack_bytes(c, passphrase="pw") == b"edge"
