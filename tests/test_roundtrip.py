"""Round trips of the product API (pack, unpack, seek_extract, open) and interoperability with
the independent reference decoder (tests/reference_decoder.py) and the vectors of
tests/vectors/ (docs/FORMAT.md section 14)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import struct
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import pytest
import qeltrix_v6
import reference_decoder as ref
from conftest import ARGON2_SMALL, KEY, OTHER_KEY, PBKDF2_SMALL, make_plaintext, pack_bytes, unpack_bytes
from hypothesis import given
from hypothesis import strategies as st

VECTORS = Path(__file__).resolve().parent / "vectors"
BLOCK_SIZES = [16, 17, 64, 1000, 4096]
CIPHERS = {"aes-256-gcm": 1, "chacha20-poly1305": 2}


def expected_container_len(pt_len: int, block_size: int, header_len: int = 4096) -> int:
    """FORMAT.md sections 5, 6 and 6.1 for full blocks and one short last block."""
    n = -(-pt_len // block_size)
    return header_len + n * (ref.META_FRAME_LEN + ref.TAG_LEN) + pt_len + 48 + 12 * n + 24


@st.composite
def plaintexts(draw: st.DrawFn, block_size: int, max_blocks: int = 5) -> bytes:
    """0 .. max_blocks * block_size + 1 bytes: random, repetitive (identical blocks) or zero."""
    n = draw(
        st.one_of(
            st.integers(0, max_blocks * block_size + 1),
            st.sampled_from([0, 1, block_size - 1, block_size, block_size + 1, 2 * block_size]),
        )
    )
    style = draw(st.sampled_from(["random", "zeros", "pattern"]))
    if style == "zeros":
        return bytes(n)
    if style == "pattern":
        return (b"0123456789abcdef" * (n // 16 + 1))[:n]
    return make_plaintext(n, draw(st.integers(0, 2**32)))


# ---------------------------------------------------------------------------------- pack / unpack


@given(
    data=st.data(),
    block_size=st.sampled_from(BLOCK_SIZES),
    cipher=st.sampled_from(sorted(CIPHERS)),
    permute=st.booleans(),
    workers=st.sampled_from([1, 2]),
)
def test_round_trip_in_memory(data, block_size, cipher, permute, workers):
    pt = data.draw(plaintexts(block_size))
    out = io.BytesIO()
    result = qeltrix_v6.pack(
        io.BytesIO(pt), out, key=KEY, cipher=cipher, block_size=block_size, permute=permute, workers=workers
    )
    c = out.getvalue()
    n_blocks = -(-len(pt) // block_size)
    assert result == qeltrix_v6.PackResult(len(pt), n_blocks, len(c))
    assert len(c) == expected_container_len(len(pt), block_size)
    back = io.BytesIO()
    assert qeltrix_v6.unpack(io.BytesIO(c), back, key=KEY, workers=workers) == len(pt)
    assert back.getvalue() == pt
    # The header says what pack was asked for.
    hdr = ref.parse_header(c)
    assert hdr["cipher_id"] == CIPHERS[cipher]
    assert hdr["block_size"] == block_size
    assert hdr["header_flags"] == (1 if permute else 0)
    assert hdr["perm_window"] == (ref.default_perm_window(block_size) if permute else 0)


@given(
    data=st.data(),
    block_size=st.sampled_from(BLOCK_SIZES),
    cipher=st.sampled_from(sorted(CIPHERS)),
    permute=st.booleans(),
    workers=st.sampled_from([1, 2]),
)
def test_round_trip_paths(data, block_size, cipher, permute, workers):
    pt = data.draw(plaintexts(block_size))
    with tempfile.TemporaryDirectory() as d:
        src, box, dst = Path(d, "in.bin"), Path(d, "box.qltx"), Path(d, "out.bin")
        src.write_bytes(pt)
        result = qeltrix_v6.pack(
            src, box, key=KEY, cipher=cipher, block_size=block_size, permute=permute, workers=workers
        )
        assert result.container_len == box.stat().st_size
        assert result.block_count == -(-len(pt) // block_size)
        # str paths work as well as PathLike ones.
        assert qeltrix_v6.unpack(str(box), str(dst), key=KEY, workers=workers) == len(pt)
        assert dst.read_bytes() == pt
        assert sorted(p.name for p in Path(d).iterdir()) == ["box.qltx", "in.bin", "out.bin"]
        # A path source and a file-object source decode the same.
        with box.open("rb") as f:
            assert unpack_bytes(f.read()) == pt


def test_path_and_file_object_mixed(tmp_path):
    pt = make_plaintext(5000, "mixed")
    src = tmp_path / "in.bin"
    src.write_bytes(pt)
    out = io.BytesIO()
    qeltrix_v6.pack(src, out, key=KEY, block_size=100)
    box = tmp_path / "box.qltx"
    with box.open("wb") as f:
        qeltrix_v6.pack(io.BytesIO(pt), f, key=KEY, block_size=100)
    with box.open("rb") as f:
        back = io.BytesIO()
        qeltrix_v6.unpack(f, back, key=KEY)
    assert back.getvalue() == pt
    assert unpack_bytes(out.getvalue()) == pt


def test_progress_reports_monotonic_counts():
    pt = make_plaintext(3000, "progress")
    seen: list[tuple[int, int | None]] = []
    pack_bytes(pt, block_size=64, progress=lambda done, total: seen.append((done, total)))
    assert seen, "progress was never called"
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert dones[-1] == len(pt)


# ---------------------------------------------------------------------------------- random access


@functools.cache
def cached_container(block_size: int, n: int, cipher: str, permute: bool) -> tuple[bytes, bytes]:
    pt = make_plaintext(n, f"cached {block_size} {cipher}")
    return pt, pack_bytes(pt, block_size=block_size, cipher=cipher, permute=permute)


CACHED = [
    (16, 0, "aes-256-gcm", True),
    (16, 16 * 9 + 7, "aes-256-gcm", True),
    (17, 17 * 6, "chacha20-poly1305", True),
    (64, 64 * 5 + 1, "aes-256-gcm", False),
    (1000, 3001, "chacha20-poly1305", False),
    (4096, 4096 * 3 + 100, "aes-256-gcm", True),
]


@given(case=st.sampled_from(CACHED), data=st.data())
def test_seek_extract_matches_slice(case, data):
    pt, c = cached_container(*case)
    bs = case[0]
    offset = data.draw(st.integers(0, len(pt) + 2 * bs), label="offset")
    length = data.draw(st.integers(0, 3 * bs + 2), label="length")
    assert qeltrix_v6.seek_extract(io.BytesIO(c), offset, length, key=KEY) == pt[offset : offset + length]


@given(case=st.sampled_from(CACHED), data=st.data())
def test_open_seek_read_matches_slice(case, data):
    pt, c = cached_container(*case)
    bs = case[0]
    reads = data.draw(
        st.lists(st.tuples(st.integers(0, len(pt) + 2 * bs), st.integers(0, 3 * bs + 2)), min_size=1, max_size=8)
    )
    with qeltrix_v6.open(io.BytesIO(c), key=KEY) as f:
        assert f.size == len(pt)
        for offset, length in reads:
            assert f.seek(offset) == offset
            assert f.read(length) == pt[offset : offset + length]
            assert f.tell() == offset + len(pt[offset : offset + length])


def test_seek_extract_full_and_past_end():
    pt, c = cached_container(64, 64 * 5 + 1, "aes-256-gcm", False)
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 0, len(pt), key=KEY) == pt
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 0, 10**12, key=KEY) == pt
    assert qeltrix_v6.seek_extract(io.BytesIO(c), len(pt), 10, key=KEY) == b""
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 10**15, 10, key=KEY) == b""
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 5, 0, key=KEY) == b""
    with pytest.raises(ValueError):
        qeltrix_v6.seek_extract(io.BytesIO(c), -1, 10, key=KEY)
    with pytest.raises(ValueError):
        qeltrix_v6.seek_extract(io.BytesIO(c), 0, -1, key=KEY)


def test_seek_extract_from_path(tmp_path):
    pt, c = cached_container(17, 17 * 6, "chacha20-poly1305", True)
    p = tmp_path / "box.qltx"
    p.write_bytes(c)
    for a in range(0, len(pt) + 3, 5):
        assert qeltrix_v6.seek_extract(p, a, 20, key=KEY) == pt[a : a + 20]


OPS = st.one_of(
    st.tuples(st.just("seek"), st.integers(-300, 300), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("read"), st.integers(-1, 200)),
    st.tuples(st.just("readinto"), st.integers(0, 200)),
    st.tuples(st.just("tell")),
    st.tuples(st.just("readall")),
)


@given(case=st.sampled_from(CACHED), ops=st.lists(OPS, max_size=25))
def test_file_object_model(case, ops):
    """ContainerFile behaves like a read-only regular file over the plaintext."""
    pt, c = cached_container(*case)
    with qeltrix_v6.open(io.BytesIO(c), key=KEY) as f:
        assert f.readable() and f.seekable() and not f.writable()
        pos = 0
        for op in ops:
            if op[0] == "seek":
                _, off, whence = op
                target = off + (0, pos, len(pt))[whence]
                if target < 0:
                    with pytest.raises((ValueError, OSError)):
                        f.seek(off, whence)
                    assert f.tell() == pos
                    continue
                assert f.seek(off, whence) == target
                pos = target
            elif op[0] == "read":
                n = op[1]
                want = pt[pos:] if n < 0 else pt[pos : pos + n]
                assert f.read(n) == want
                pos += len(want)
            elif op[0] == "readinto":
                buf = bytearray(b"\xaa" * op[1])
                want = pt[pos : pos + op[1]]
                assert f.readinto(buf) == len(want)
                assert bytes(buf[: len(want)]) == want
                assert bytes(buf[len(want) :]) == b"\xaa" * (op[1] - len(want))
                pos += len(want)
            elif op[0] == "readall":
                assert f.readall() == pt[pos:]
                pos = max(pos, len(pt))
            assert f.tell() == pos
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)


def test_open_seek_whence_and_tell():
    pt, c = cached_container(16, 16 * 9 + 7, "aes-256-gcm", True)
    with qeltrix_v6.open(io.BytesIO(c), "rb", key=KEY) as f:
        assert f.seek(-5, io.SEEK_END) == len(pt) - 5
        assert f.read() == pt[-5:]
        assert f.read() == b""
        assert f.seek(10) == 10
        assert f.seek(7, io.SEEK_CUR) == 17
        assert f.read(3) == pt[17:20]
        assert f.seek(-4, io.SEEK_CUR) == 16
        assert f.tell() == 16
        assert f.seek(0, io.SEEK_END) == len(pt)
        assert f.seek(len(pt) + 100) == len(pt) + 100
        assert f.read(5) == b""
        assert f.seek(0) == 0
        buf = memoryview(bytearray(40))
        assert f.readinto(buf) == 40
        assert bytes(buf) == pt[:40]
        with pytest.raises(ValueError):
            f.seek(0, 3)


@given(case=st.sampled_from(CACHED), data=st.data())
def test_buffered_reader_wrapping(case, data):
    pt, c = cached_container(*case)
    buffer_size = data.draw(st.sampled_from([1, 7, 64, 8192]))
    raw = qeltrix_v6.open(io.BytesIO(c), key=KEY)
    with io.BufferedReader(raw, buffer_size=buffer_size) as f:
        for _ in range(data.draw(st.integers(1, 6))):
            off = data.draw(st.integers(0, len(pt) + 5))
            n = data.draw(st.integers(-1, 300))
            f.seek(off)
            want = pt[off:] if n < 0 else pt[off : off + n]
            assert f.read(n) == want
            assert f.tell() == off + len(want)
        f.seek(0)
        assert f.peek(1)[:1] == pt[:1]
        assert f.read() == pt
    assert raw.closed


def test_copyfileobj_and_textio():
    pt, c = cached_container(1000, 3001, "chacha20-poly1305", False)
    dst = io.BytesIO()
    with qeltrix_v6.open(io.BytesIO(c), key=KEY) as f:
        shutil.copyfileobj(f, dst, 333)
    assert dst.getvalue() == pt
    text = "line one\nzweite Zeile \u00e4\u00f6\u00fc\n" * 50
    box = io.BytesIO(pack_bytes(text.encode("utf-8"), block_size=17))
    with io.TextIOWrapper(io.BufferedReader(qeltrix_v6.open(box, key=KEY)), encoding="utf-8") as t:
        assert t.readlines() == text.splitlines(keepends=True)


def test_zipfile_inside_container(tmp_path):
    members = {
        "a.txt": b"hello zip\n" * 100,
        "dir/b.bin": make_plaintext(5000, "zip b"),
        "empty": b"",
        "c.bin": make_plaintext(123, "zip c"),
    }
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for i, (name, body) in enumerate(members.items()):
            z.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED)
    for bs in (64, 333, 4096):
        c = pack_bytes(zbuf.getvalue(), block_size=bs)
        with qeltrix_v6.open(io.BytesIO(c), key=KEY) as f, zipfile.ZipFile(f) as z:
            assert sorted(z.namelist()) == sorted(members)
            assert z.testzip() is None
            for name, body in reversed(members.items()):
                assert z.read(name) == body
                with z.open(name) as m:
                    assert m.read(10) == body[:10]
    box = tmp_path / "archive.zip.qltx"
    box.write_bytes(c)
    with qeltrix_v6.open(box, key=KEY) as f:
        assert f.name == str(box)
        with zipfile.ZipFile(f) as z:
            assert z.read("dir/b.bin") == members["dir/b.bin"]


class NonSeekable(io.RawIOBase):
    """A read-only stream that cannot seek (a pipe, stdin, a socket)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._b.readinto(b)


def test_non_seekable_sources():
    pt, c = cached_container(17, 17 * 6, "chacha20-poly1305", True)
    out = io.BytesIO()
    assert qeltrix_v6.unpack(NonSeekable(c), out, key=KEY) == len(pt)
    assert out.getvalue() == pt
    assert qeltrix_v6.seek_extract(NonSeekable(c), 20, 30, key=KEY) == pt[20:50]
    with qeltrix_v6.open(NonSeekable(c), key=KEY) as f:
        f.seek(-3, io.SEEK_END)
        assert f.read() == pt[-3:]
    # pack reads its input sequentially: a non-seekable source is fine.
    assert unpack_bytes(pack_bytes_from(NonSeekable(pt), block_size=16)) == pt


def pack_bytes_from(src: io.RawIOBase, **kwargs: object) -> bytes:
    out = io.BytesIO()
    qeltrix_v6.pack(src, out, key=KEY, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def test_seek_extract_huge_length_reads_to_the_end():
    pt, c = cached_container(64, 64 * 5 + 1, "aes-256-gcm", False)
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 0, sys.maxsize, key=KEY) == pt
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 100, sys.maxsize, key=KEY) == pt[100:]
    assert qeltrix_v6.seek_extract(io.BytesIO(c), sys.maxsize, sys.maxsize, key=KEY) == b""


# ---------------------------------------------------------------------------------- streaming writer


@given(
    data=st.data(),
    block_size=st.sampled_from(BLOCK_SIZES),
    cipher=st.sampled_from(sorted(CIPHERS)),
    permute=st.booleans(),
)
def test_streaming_writer_equals_pack(data, block_size, cipher, permute):
    pt = data.draw(plaintexts(block_size))
    sizes = data.draw(st.lists(st.integers(0, 2 * block_size + 3), max_size=40))
    box = io.BytesIO()
    with qeltrix_v6.open(box, "wb", key=KEY, block_size=block_size, cipher=cipher, permute=permute) as w:
        assert w.writable()
        pos = 0
        for n in sizes:
            if pos >= len(pt):
                break
            assert w.write(memoryview(pt[pos : pos + n])) == len(pt[pos : pos + n])
            pos += n
        w.write(pt[pos:])
        assert w.tell() == len(pt)
    c = box.getvalue()
    packed = pack_bytes(pt, block_size=block_size, cipher=cipher, permute=permute)
    assert w.result == qeltrix_v6.PackResult(len(pt), -(-len(pt) // block_size), len(c))
    assert len(c) == len(packed)
    assert unpack_bytes(c) == pt
    # Same structure as pack: same header fields and index (block lengths).
    a, b = ref.inspect(c, key=KEY), ref.inspect(packed, key=KEY)
    for field in ("header_len", "cipher_id", "block_size", "perm_window", "header_flags", "pt_lens", "footer_len"):
        assert a[field] == b[field], field


def test_streaming_writer_to_path(tmp_path):
    pt = make_plaintext(10_000, "writer path")
    dst = tmp_path / "w.qltx"
    with qeltrix_v6.open(dst, "wb", passphrase="s3cret", kdf="pbkdf2", kdf_params=PBKDF2_SMALL, block_size=128) as w:
        for i in range(0, len(pt), 97):
            w.write(pt[i : i + 97])
        assert not dst.exists()  # atomic: the final name appears on close
    assert dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.qltx"]
    with qeltrix_v6.open(dst, passphrase="s3cret") as f:
        assert f.read() == pt


def test_streaming_writer_abort_on_exception(tmp_path):
    dst = tmp_path / "w.qltx"
    with pytest.raises(RuntimeError, match="stop"), qeltrix_v6.open(dst, "wb", key=KEY, block_size=16) as w:
        w.write(b"x" * 1000)
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(("kdf", "params"), [("argon2id", ARGON2_SMALL), ("pbkdf2", PBKDF2_SMALL)])
def test_passphrase_round_trip(kdf, params):
    pt = make_plaintext(700, kdf)
    pw = "Gr\u00fc\u00dfe, \u00e9t\u00e9 \U0001f511"
    c = pack_bytes(pt, passphrase=pw, kdf=kdf, kdf_params=params, block_size=64)
    assert unpack_bytes(c, passphrase=pw) == pt
    # Passphrases are NFC-normalised (FORMAT.md 3.1): the NFD spelling opens too.
    assert unpack_bytes(c, passphrase=unicodedata.normalize("NFD", pw)) == pt
    assert ref.decode(c, passphrase=pw) == pt
    info = ref.inspect(c, passphrase=pw)
    assert info["stanza_kinds"] == [ref.KIND_ARGON2ID if kdf == "argon2id" else ref.KIND_PBKDF2]
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 100, 50, passphrase=pw) == pt[100:150]
    with pytest.raises(qeltrix_v6.WrongKeyError):
        unpack_bytes(c, passphrase=pw + " ")


@pytest.mark.parametrize(("kdf", "params"), [("argon2id", ARGON2_SMALL), ("pbkdf2", PBKDF2_SMALL)])
def test_key_and_passphrase_open_one_container(kdf, params):
    pt = make_plaintext(300, "two recipients")
    c = pack_bytes(pt, key=KEY, passphrase="pw one", kdf=kdf, kdf_params=params, block_size=32)
    assert unpack_bytes(c, key=KEY) == pt
    assert unpack_bytes(c, passphrase="pw one") == pt
    assert unpack_bytes(c, key=KEY, passphrase="pw one") == pt
    # Either credential suffices when the other is wrong.
    assert unpack_bytes(c, key=OTHER_KEY, passphrase="pw one") == pt
    assert unpack_bytes(c, key=KEY, passphrase="nope") == pt
    assert ref.decode(c, key=KEY) == pt
    assert ref.decode(c, passphrase="pw one") == pt
    hdr = ref.parse_header(c)
    assert hdr["recipient_count"] == 2
    assert sorted(kind for kind, _ in hdr["stanzas"]) == sorted(
        [ref.KIND_KEY, ref.KIND_ARGON2ID if kdf == "argon2id" else ref.KIND_PBKDF2]
    )
    with pytest.raises(qeltrix_v6.WrongKeyError):
        unpack_bytes(c, key=OTHER_KEY, passphrase="nope")


def test_kdf_parameters_are_stored():
    c = pack_bytes(b"abc", passphrase="pw", kdf_params={"t_cost": 2, "m_cost_kib": 128, "lanes": 2})
    [(kind, body)] = ref.parse_header(c)["stanzas"]
    assert kind == ref.KIND_ARGON2ID
    assert struct.unpack_from("<III", body, 16) == (2, 128, 2)
    c = pack_bytes(b"abc", passphrase="pw", kdf="pbkdf2", kdf_params={"iterations": 1234})
    [(kind, body)] = ref.parse_header(c)["stanzas"]
    assert kind == ref.KIND_PBKDF2
    assert struct.unpack_from("<I", body, 16) == (1234,)
    assert unpack_bytes(c, passphrase="pw") == b"abc"


def test_salts_are_fresh_per_container():
    """No fixed salt anywhere: two containers with the same passphrase use different kdf_salts."""
    a = pack_bytes(b"x", passphrase="same", kdf="pbkdf2", kdf_params=PBKDF2_SMALL)
    b = pack_bytes(b"x", passphrase="same", kdf="pbkdf2", kdf_params=PBKDF2_SMALL)
    [(_, body_a)] = ref.parse_header(a)["stanzas"]
    [(_, body_b)] = ref.parse_header(b)["stanzas"]
    assert body_a[:16] != body_b[:16]
    assert ref.parse_header(a)["container_id"] != ref.parse_header(b)["container_id"]


# ---------------------------------------------------------------------------------- reference decoder


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 64 * 70 + 9])
def test_reference_decodes_product(cipher, permute, size):
    pt = make_plaintext(size, "ref decodes")
    c = pack_bytes(pt, block_size=64, cipher=cipher, permute=permute)
    assert ref.decode(c, key=KEY) == pt
    info = ref.inspect(c, key=KEY)
    assert info["cipher_id"] == CIPHERS[cipher]
    assert info["block_count"] == -(-size // 64)
    assert info["pt_lens"] == [len(pt[i : i + 64]) for i in range(0, size, 64)]
    assert info["header_len"] % 4096 == 0
    # Frames are contiguous from header_len in physical-slot order, placed as section 7 says.
    n = info["block_count"]
    slots = ref.physical_order(info["keys"]["perm"], n, info["perm_window"]) if permute else list(range(n))
    pos = info["header_len"]
    for logical in slots:
        assert info["frame_offsets"][logical] == pos
        pos += ref.META_FRAME_LEN + info["pt_lens"][logical] + ref.TAG_LEN
    assert pos == info["footer_offset"]


@pytest.mark.parametrize("cipher_id", [1, 2])
@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 64 * 9 + 9])
def test_product_decodes_reference(cipher_id, permute, size):
    pt = make_plaintext(size, "product decodes")
    c = ref.encode(pt, key=KEY, cipher_id=cipher_id, block_size=64, permute=permute, perm_window=3 if permute else None)
    assert unpack_bytes(c) == pt
    assert unpack_bytes(c, workers=1) == pt
    for a in range(0, size + 1, 37):
        assert qeltrix_v6.seek_extract(io.BytesIO(c), a, 70, key=KEY) == pt[a : a + 70]


@pytest.mark.parametrize(("kdf", "params"), [("argon2id", ARGON2_SMALL), ("pbkdf2", PBKDF2_SMALL)])
def test_product_decodes_reference_passphrase_and_unknown_stanza(kdf, params):
    pt = make_plaintext(200, "ref pw")
    c = ref.encode(
        pt,
        key=KEY,
        passphrase="\u00e9t\u00e9",
        kdf=kdf,
        kdf_params=params,
        block_size=16,
        extra_stanzas=[(0x7F, b"future recipient kind")],
    )
    assert ref.parse_header(c)["recipient_count"] == 3
    assert unpack_bytes(c, key=KEY) == pt
    assert unpack_bytes(c, passphrase=unicodedata.normalize("NFD", "\u00e9t\u00e9")) == pt


def test_product_decodes_reference_multi_window_header():
    """A header larger than 4096 bytes (big unknown stanzas) and a custom perm_window."""
    pt = make_plaintext(40 * 16 + 3, "big header")
    c = ref.encode(pt, key=KEY, block_size=16, perm_window=7, extra_stanzas=[(200, bytes(3000))] * 2)
    assert ref.parse_header(c)["header_len"] == 8192
    assert unpack_bytes(c) == pt


@pytest.mark.parametrize("align", [1, 8, 512])
def test_product_decodes_unaligned_headers(monkeypatch, align):
    """header_len need only be in range; rounding it to 4096 is a writer's SHOULD."""
    monkeypatch.setattr(ref, "HEADER_ALIGN", align)
    pt = make_plaintext(300, "unaligned")
    c = ref.encode(pt, key=KEY, block_size=16, perm_window=5)
    header_len = ref.parse_header(c)["header_len"]
    assert header_len < 4096 and header_len % align == 0
    assert unpack_bytes(c) == pt
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 33, 40, key=KEY) == pt[33:73]


def test_product_decodes_header_without_padding():
    # 44 fixed + (3 + 60) key stanza + (3 + body) unknown stanza + 64 seal == 4096 exactly.
    body = 4096 - 64 - 44 - 63 - 3
    c = ref.encode(
        b"no padding", key=KEY, block_size=16, extra_stanzas=[(0x42, bytes(range(256)) * 15 + bytes(body - 3840))]
    )
    hdr = ref.parse_header(c)
    assert hdr["header_len"] == 4096
    assert hdr["stanza_area_end"] == 4096 - 64
    assert unpack_bytes(c) == b"no padding"


@pytest.mark.parametrize("perm_window", [1, 2, 1000])
def test_product_decodes_any_perm_window(perm_window):
    pt = make_plaintext(16 * 20 + 1, "window")
    c = ref.encode(pt, key=KEY, block_size=16, perm_window=perm_window)
    assert unpack_bytes(c) == pt


# ---------------------------------------------------------------------------------- vectors


def vectors() -> list[dict]:
    out = []
    for p in sorted(VECTORS.glob("*.json")):
        v = json.loads(p.read_text())
        if isinstance(v, dict):
            v["name"] = p.stem
            out.append(v)
    return out


def credentials(v: dict) -> list[dict]:
    creds = []
    if "key_hex" in v:
        creds.append({"key": bytes.fromhex(v["key_hex"])})
    if "passphrase" in v:
        creds.append({"passphrase": v["passphrase"]})
    assert creds
    return creds


def test_vectors_present():
    names = {v["name"] for v in vectors()}
    assert {"empty", "one-block", "one-byte-over", "chacha", "permuted-window", "argon2id", "pbkdf2"} <= names
    expects = {v["expect"] for v in vectors()}
    assert {"ok", "corrupt", "wrong_key", "truncated"} <= expects
    assert expects <= {"ok", *NEGATIVE}


@pytest.mark.parametrize("v", [v for v in vectors() if v["expect"] == "ok"], ids=lambda v: v["name"])
def test_ok_vectors_decode(v, tmp_path):
    c = (VECTORS / v["container"]).read_bytes()
    want = bytes.fromhex(v["plaintext_hex"]) if "plaintext_hex" in v else None
    for cred in credentials(v):
        pt = unpack_bytes(c, **cred)
        if want is not None:
            assert pt == want
        assert hashlib.sha256(pt).hexdigest() == v["plaintext_sha256"]
        assert len(pt) == v["pt_total_len"]
        # From a path too, and by random access.
        p = tmp_path / v["container"]
        p.write_bytes(c)
        out = tmp_path / "out.bin"
        assert qeltrix_v6.unpack(p, out, **cred) == len(pt)
        assert out.read_bytes() == pt
        mid = len(pt) // 3
        assert qeltrix_v6.seek_extract(p, mid, 50, **cred) == pt[mid : mid + 50]


NEGATIVE = {
    "malformed": qeltrix_v6.MalformedError,
    "corrupt": qeltrix_v6.AuthenticationError,
    "wrong_key": qeltrix_v6.WrongKeyError,
    "truncated": qeltrix_v6.TruncatedError,
}


@pytest.mark.parametrize("v", [v for v in vectors() if v["expect"] != "ok"], ids=lambda v: v["name"])
def test_negative_vectors_fail_with_matching_class(v, tmp_path):
    c = (VECTORS / v["container"]).read_bytes()
    cls = NEGATIVE[v["expect"]]
    for cred in credentials(v):
        with pytest.raises(cls):
            unpack_bytes(c, **cred)
        with pytest.raises(cls):
            qeltrix_v6.seek_extract(io.BytesIO(c), 0, 2**40, **cred)
        out = tmp_path / "out.bin"
        with pytest.raises(cls):
            qeltrix_v6.unpack(io.BytesIO(c), out, **cred)
        assert list(tmp_path.iterdir()) == []
    # The reference decoder agrees on the class.
    with pytest.raises(ref.RefError) as e:
        ref.decode(c, **credentials(v)[0])
    assert e.value.kind == v["expect"]


# ---------------------------------------------------------------------------------- placement


def physical_slots(c: bytes) -> list[int]:
    """slots[s] = logical block stored at physical slot s, from the index frame offsets."""
    info = ref.inspect(c, key=KEY)
    return sorted(range(info["block_count"]), key=lambda i: info["frame_offsets"][i])


def test_permuted_order_is_not_identity():
    pt = make_plaintext(64 * 64, "perm")
    c = pack_bytes(pt, block_size=64, permute=True)
    slots = physical_slots(c)
    assert sorted(slots) == list(range(64))
    assert slots != list(range(64))
    info = ref.inspect(c, key=KEY)
    assert info["perm_window"] == 64
    assert slots == ref.physical_order(info["keys"]["perm"], 64, 64)
    # A fresh container has a fresh K_perm, hence (almost surely) another order.
    assert physical_slots(pack_bytes(pt, block_size=64, permute=True)) != slots


@pytest.mark.parametrize("n_blocks", [1, 2, 3, 63, 64, 65, 128, 130])
def test_placement_follows_section_7_across_windows(n_blocks):
    pt = make_plaintext(16 * n_blocks - 3, "windows")
    c = pack_bytes(pt, block_size=16)
    info = ref.inspect(c, key=KEY)
    assert info["perm_window"] == 64
    assert physical_slots(c) == ref.physical_order(info["keys"]["perm"], n_blocks, 64)
    # Frames never leave their window.
    for slot, logical in enumerate(physical_slots(c)):
        assert slot // 64 == logical // 64
    assert unpack_bytes(c) == pt


def test_default_perm_window_for_large_blocks():
    """perm_window = max(1, min(64, 64 MiB / block_size)) (section 7)."""
    c = pack_bytes(b"big blocks", block_size=2**21, workers=1)
    assert ref.parse_header(c)["perm_window"] == 32
    assert unpack_bytes(c) == b"big blocks"


def test_unpermuted_order_is_identity():
    pt = make_plaintext(64 * 64, "perm")
    c = pack_bytes(pt, block_size=64, permute=False)
    assert physical_slots(c) == list(range(64))
    hdr = ref.parse_header(c)
    assert (hdr["header_flags"], hdr["perm_window"]) == (0, 0)
