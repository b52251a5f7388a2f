"""Archives (docs/FORMAT.md section 16): pack, list, get, unpack, cat --member, verify, the API,
the reference decoder, hostile member tables written by hand, and scale."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path

import pytest
import qeltrix_v6
from qeltrix_v6 import archive as arc
from qeltrix_v6.cli import ExitCode, app
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_decoder as ref

KEY = bytes(range(32))
T0 = 1_700_000_000_000_000_000
runner = CliRunner()
VECTORS = Path(__file__).resolve().parent / "vectors"


def qeltrix(*args: str, input: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=120,
        start_new_session=True,
    )


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    p = tmp_path / "k.key"
    p.write_bytes(KEY)
    return p


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """docs/ with a 0-byte file, a small file, a 300 KB file (several blocks), a symlink, a hard
    link, a subdirectory with its own mode, and distinct mtimes."""
    root = tmp_path / "src" / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deep.txt").write_bytes(b"deep")
    os.symlink("a.txt", root / "link")
    os.link(root / "a.txt", root / "hard")
    os.chmod(root / "a.txt", 0o640)
    os.chmod(root / "sub", 0o750)
    for i, p in enumerate(["empty", "a.txt", "big.bin", "sub/deep.txt", "sub", ""]):
        os.utime(root / p if p else root, ns=(T0 + i * 10**9, T0 + i * 10**9))
    return root


def hostile(tmp_path: Path, members: list[dict], name: str = "evil.qltx") -> Path:
    """An archive whose member table is written by hand (the reference encoder, no checks)."""
    pt = ref.encode_archive_plaintext(members)
    p = tmp_path / name
    p.write_bytes(ref.encode(pt, key=KEY, block_size=64, archive=True))
    return p


def f(path: str, data: bytes = b"x", mode: int = 0o644) -> dict:
    return {"path": path, "type": "file", "mode": mode, "mtime_ns": T0, "data": data}


def d(path: str) -> dict:
    return {"path": path, "type": "dir", "mode": 0o755, "mtime_ns": T0}


def sym(path: str, target: str) -> dict:
    return {"path": path, "type": "symlink", "mode": 0o777, "mtime_ns": T0, "link": target}


# --- packing and reading ---------------------------------------------------------------------


def test_pack_ls_get_unpack_round_trip(tmp_path: Path, tree: Path, keyfile: Path) -> None:
    out = tmp_path / "b.qltx"
    r = qeltrix("pack", "-q", "--key-file", str(keyfile), "--block-size", "64KiB", str(tree), str(out))
    assert r.returncode == 0, r.stderr
    r = qeltrix("ls", "--key-file", str(keyfile), str(out))
    assert r.stdout.decode().split() == [
        "docs/", "docs/a.txt", "docs/big.bin", "docs/empty", "docs/hard", "docs/link", "docs/sub/",
        "docs/sub/deep.txt",
    ]  # fmt: skip
    listing = json.loads(qeltrix("ls", "--json", "--key-file", str(keyfile), str(out)).stdout)
    by = {m["path"]: m for m in listing}
    assert by["docs/hard"]["type"] == "hardlink" and by["docs/hard"]["link"] == "docs/a.txt"
    assert by["docs/link"] == {**by["docs/link"], "type": "symlink", "link": "a.txt"}
    assert by["docs/a.txt"]["mode"] == 0o640 and by["docs/a.txt"]["mtime_ns"] == T0 + 10**9
    long = qeltrix("ls", "--long", "--key-file", str(keyfile), str(out)).stdout.decode()
    assert "-rw-r----- " in long and "docs/link -> a.txt" in long

    info = json.loads(qeltrix("info", "--json", str(out)).stdout)
    assert info["archive"] is True
    r = qeltrix("get", "--key-file", str(keyfile), str(out), "docs/big.bin", "-o", "-")
    assert r.returncode == 0 and r.stdout == (tree / "big.bin").read_bytes()

    dest = tmp_path / "restored"
    r = qeltrix("unpack", "-q", "--key-file", str(keyfile), str(out), str(dest))
    assert r.returncode == 0, r.stderr
    got = dest / "docs"
    for name in ("empty", "a.txt", "big.bin", "sub/deep.txt"):
        assert (got / name).read_bytes() == (tree / name).read_bytes()
        assert (got / name).stat().st_mtime_ns == (tree / name).stat().st_mtime_ns
    assert stat.S_IMODE((got / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((got / "sub").stat().st_mode) == 0o750
    assert (got / "sub").stat().st_mtime_ns == T0 + 4 * 10**9
    assert os.readlink(got / "link") == "a.txt"
    assert os.path.samefile(got / "hard", got / "a.txt")
    assert not list(dest.rglob("*.qeltrix-tmp"))

    # get keeps the path under -C; cat --member reads a range of one member.
    r = qeltrix("get", "-q", "--key-file", str(keyfile), str(out), "docs/sub", "-C", str(tmp_path / "g"))
    assert r.returncode == 0 and (tmp_path / "g/docs/sub/deep.txt").read_bytes() == b"deep"
    r = qeltrix(
        "cat", "--key-file", str(keyfile), str(out), "--member", "docs/big.bin", "--offset", "1000", "--length", "70000"
    )
    assert r.stdout == (tree / "big.bin").read_bytes()[1000:71000]


def test_from_tar_stream(tmp_path: Path, tree: Path, keyfile: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(tree, arcname="./docs")
    out = tmp_path / "t.qltx"
    r = qeltrix("pack", "-q", "--key-file", str(keyfile), "--from-tar", "-", str(out), input=buf.getvalue())
    assert r.returncode == 0, r.stderr
    with qeltrix_v6.open_archive(out, key=KEY) as a:
        by = {m.path: m for m in a.members()}
        assert by["docs/link"].type == "symlink" and by["docs/hard"].type == "hardlink"
        assert a.open("docs/big.bin").read() == (tree / "big.bin").read_bytes()
        assert a.open("docs/hard").read() == b"hello\n"
    piped = qeltrix("pack", "-q", "--key-file", str(keyfile), str(tree), "-")  # an archive to stdout
    assert piped.returncode == 0, piped.stderr
    (tmp_path / "piped.qltx").write_bytes(piped.stdout)
    with qeltrix_v6.open_archive(tmp_path / "piped.qltx", key=KEY) as a:
        assert a.open("docs/sub/deep.txt").read() == b"deep"
    r = qeltrix(
        "pack", "-q", "--key-file", str(keyfile), "--from-tar", "-", str(tmp_path / "x.qltx"), input=b"junk" * 200
    )
    assert r.returncode == ExitCode.NOT_A_CONTAINER and r.stderr.decode().count("\n") <= 2
    assert not (tmp_path / "x.qltx").exists()


def test_single_file_stays_a_plain_container(tmp_path: Path, tree: Path, keyfile: Path) -> None:
    out = tmp_path / "one.qltx"
    result = runner.invoke(app, ["pack", "-q", "--key-file", str(keyfile), str(tree / "big.bin"), str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[14] & arc.HEADER_FLAG_ARCHIVE == 0
    assert ref.decode(out.read_bytes(), key=KEY) == (tree / "big.bin").read_bytes()


def test_api(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "api.qltx"
    res = arc.pack_archive([tree], out, key=KEY, block_size=4096)
    assert res.member_count == 8 and res.skipped == []
    with qeltrix_v6.open_archive(out, key=KEY) as a:
        assert len(a.members()) == 8
        with a.open("docs/big.bin") as fh:
            fh.seek(-10, io.SEEK_END)
            assert fh.read() == (tree / "big.bin").read_bytes()[-10:]
            assert fh.seekable() and fh.size == 300_000
        assert a.open("docs/empty").read() == b""
        dest = a.extract("docs/a.txt", tmp_path)
        assert Path(dest).read_bytes() == b"hello\n"
        with pytest.raises(qeltrix_v6.QeltrixIOError, match="already exists"):
            a.extract("docs/a.txt", tmp_path)
        a.extract("docs/a.txt", tmp_path, overwrite=True)
        a.extract_all(tmp_path / "alone", paths=["docs/hard"])  # a hard link without its target
        assert (tmp_path / "alone/docs/hard").read_bytes() == b"hello\n"
        assert (tmp_path / "alone/docs/hard").stat().st_nlink == 1
        with pytest.raises(qeltrix_v6.QeltrixIOError, match="no such member"):
            a.open("docs/nope")
        with pytest.raises(qeltrix_v6.QeltrixIOError, match="is a dir"):
            a.open("docs/sub")
    plain = tmp_path / "plain.qltx"
    qeltrix_v6.pack(io.BytesIO(b"x"), plain, key=KEY)
    with pytest.raises(qeltrix_v6.MalformedError, match="not an archive"):
        qeltrix_v6.open_archive(plain, key=KEY)


def test_devices_are_skipped(tmp_path: Path, tree: Path, keyfile: Path) -> None:
    os.mkfifo(tree / "fifo")
    out = tmp_path / "f.qltx"
    r = qeltrix("pack", "-q", "--key-file", str(keyfile), str(tree), str(out))
    assert r.returncode == 0 and b"fifo: not a file, directory or symlink" in r.stderr
    with qeltrix_v6.open_archive(out, key=KEY) as a:
        assert "docs/fifo" not in {m.path for m in a.members()}


def test_reference_decoder_reads_the_products_archive(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "r.qltx"
    arc.pack_archive([tree], out, key=KEY, block_size=1024)
    members = ref.decode_archive(out.read_bytes(), key=KEY)
    by = {m["path"]: m for m in members}
    assert by["docs/big.bin"]["data"] == (tree / "big.bin").read_bytes()
    assert by["docs/hard"]["data"] == b"hello\n" and by["docs/link"]["link"] == "a.txt"


def test_product_reads_the_archive_vector(tmp_path: Path) -> None:
    meta = json.loads((VECTORS / "archive.json").read_text())
    with qeltrix_v6.open_archive(VECTORS / meta["container"], key=bytes.fromhex(meta["key_hex"])) as a:
        got = [m.as_dict() for m in a.members()]
        for want, m in zip(meta["members"], got, strict=True):
            assert {k: v for k, v in want.items() if k != "data"} == m
            if "data" in want:
                assert a.open(m["path"]).read().hex() == want["data"]


def test_rewriting_recipients_keeps_the_archive_flag(tmp_path: Path, tree: Path, keyfile: Path) -> None:
    out = tmp_path / "p.qltx"
    arc.pack_archive([tree], out, key=KEY)
    new = tmp_path / "new.key"
    new.write_bytes(bytes(32))
    r = qeltrix("passwd", "--key-file", str(keyfile), "--add-key-file", str(new), str(out))
    assert r.returncode == 0, r.stderr
    with qeltrix_v6.open_archive(out, key=bytes(32)) as a:
        assert len(a) == 8
    r = qeltrix("rotate", "-q", "--key-file", str(keyfile), "--drop-missing", str(out))
    assert r.returncode == 0, r.stderr
    with qeltrix_v6.open_archive(out, key=KEY) as a:
        assert len(a) == 8 and a.open("docs/a.txt").read() == b"hello\n"


def test_verify_names_the_members_of_a_bad_block(tmp_path: Path, keyfile: Path) -> None:
    members = [d("d"), f("d/one", b"1" * 200), f("d/two", b"2" * 200)]
    p = hostile(tmp_path, members, "v.qltx")
    info = ref.inspect(p.read_bytes(), key=KEY)
    c = bytearray(p.read_bytes())
    block = 4  # bytes 256..319: all of d/two's
    c[info["frame_offsets"][block] + 150] ^= 1
    p.write_bytes(bytes(c))
    r = qeltrix("verify", "--json", "--key-file", str(keyfile), str(p))
    assert r.returncode == ExitCode.CORRUPT
    assert json.loads(r.stdout)["first_bad_block"]["members"] == ["d/two"]
    r = qeltrix("verify", "--key-file", str(keyfile), str(p))
    assert b"members: d/two" in r.stderr


# --- hostile archives (tables written by hand) -------------------------------------------------


@pytest.mark.parametrize(
    "members",
    [
        [f("/etc/passwd")],
        [f("a/../../x")],
        [f("./x")],
        [f("a//b")],
        [f("x"), f("x")],
        [{"path": "h", "type": "hardlink", "mode": 0o644, "mtime_ns": 0, "link": "/etc/passwd"}],
    ],
    ids=["absolute", "dotdot", "dot", "empty-component", "duplicate", "hardlink-out"],
)
def test_malformed_tables_are_corrupt(tmp_path: Path, keyfile: Path, members: list[dict]) -> None:
    p = hostile(tmp_path, members)
    with pytest.raises(qeltrix_v6.IntegrityError, match="corrupt member table"):
        qeltrix_v6.open_archive(p, key=KEY)
    dest = tmp_path / "out"
    r = qeltrix("unpack", "--key-file", str(keyfile), str(p), str(dest))
    assert r.returncode == ExitCode.CORRUPT
    assert r.stderr.decode().startswith("qeltrix: error: corrupt member table")
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([sym("l", "../outside"), f("z")], "points outside"),
        ([d("a"), sym("a/l", "../../x")], "points outside"),
        ([sym("l", "/etc")], "absolute path"),
        ([sym("l", "."), f("l/x")], "lies under the symlink"),
        ([f(unicodedata.normalize("NFC", "caf\u00e9")), f(unicodedata.normalize("NFD", "caf\u00e9"))], "normalisation"),
    ],
    ids=["symlink-dotdot", "nested-symlink-dotdot", "symlink-absolute", "through-symlink", "nfc-nfd"],
)
def test_unsafe_archives_write_nothing(tmp_path: Path, keyfile: Path, members: list[dict], message: str) -> None:
    p = hostile(tmp_path, [*members, f("first-would-be-written")])
    dest = tmp_path / "out"
    dest.mkdir()
    r = qeltrix("unpack", "--key-file", str(keyfile), str(p), str(dest))
    assert r.returncode == ExitCode.ERROR, r.stderr
    assert message in r.stderr.decode() and r.stderr.decode().count("qeltrix: error") == 1
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "outside").exists()


def test_existing_symlink_on_disk_is_not_followed(tmp_path: Path, keyfile: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    p = hostile(tmp_path, [d("docs"), f("docs/x", b"pwned")])
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(outside, dest / "docs")
    r = qeltrix("unpack", "--key-file", str(keyfile), str(p), str(dest))
    assert r.returncode != 0 and b"refusing to write through it" in r.stderr
    assert list(outside.iterdir()) == []


def test_existing_files_need_force(tmp_path: Path, keyfile: Path) -> None:
    p = hostile(tmp_path, [f("x", b"new")])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "x").write_bytes(b"old")
    r = qeltrix("unpack", "--key-file", str(keyfile), str(p), str(dest))
    assert r.returncode == ExitCode.IO and b"already exists" in r.stderr
    assert (dest / "x").read_bytes() == b"old"
    r = qeltrix("unpack", "--force", "-q", "--key-file", str(keyfile), str(p), str(dest))
    assert r.returncode == 0 and (dest / "x").read_bytes() == b"new"
    # A symlink in place of the file is replaced, never written through.
    (dest / "x").unlink()
    os.symlink(tmp_path / "victim", dest / "x")
    r = qeltrix("unpack", "--force", "-q", "--key-file", str(keyfile), str(p), str(dest))
    assert r.returncode == 0 and not (tmp_path / "victim").exists() and (dest / "x").read_bytes() == b"new"


def test_setuid_bits_are_not_restored(tmp_path: Path) -> None:
    p = hostile(tmp_path, [f("x", b"#!/bin/sh\n", mode=0o6755)])
    with qeltrix_v6.open_archive(p, key=KEY) as a:
        a.extract_all(tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out/x").stat().st_mode) == 0o755


# --- scale ---------------------------------------------------------------------------------------


def test_100k_members_list_and_get_one(tmp_path: Path) -> None:
    n = 100_000

    def entries():
        yield arc._Entry(arc.Member("d", "dir", 0o755, T0, 0, 0))
        for i in range(n):
            yield arc._Entry(
                arc.Member(f"d/f{i:06d}", "file", 0o644, T0, 0, 0), io.BytesIO(b"%d" % i if i % 7 else b"")
            )

    source = arc._ArchiveSource(entries())
    out = tmp_path / "many.qltx"
    qeltrix_v6.pack(source, out, key=KEY, _archive=True)  # type: ignore[arg-type]
    with qeltrix_v6.open_archive(out, key=KEY) as a:
        assert len(a) == n + 1
        assert a.open("d/f054321").read() == b"54321"
        assert a.member("d/f000014").size == 0
        a.extract_all(tmp_path / "out", paths=["d/f099999"])
    assert (tmp_path / "out/d/f099999").read_bytes() == b"99999"
    assert len(list((tmp_path / "out/d").iterdir())) == 1


class CountingFile(io.RawIOBase):
    """A seekable file that counts the bytes read through it."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._f = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = self._f.readinto(b)
        self.bytes_read += n
        return n


def test_listing_and_one_restore_read_only_the_table_and_that_member(tmp_path: Path) -> None:
    """FORMAT.md section 16: listing reads the member table's frames (nothing of the data);
    restoring one member reads its bytes plus at most two partly used blocks."""
    block = 4096
    big = os.urandom(2_000_000)
    members = [d("d"), *(f(f"d/small{i:03d}", os.urandom(500)) for i in range(200)), f("d/big", big)]
    members.insert(100, f("d/target", os.urandom(10_000)))
    raw = ref.encode(ref.encode_archive_plaintext(members), key=KEY, block_size=block, archive=True)
    info = ref.inspect(raw, key=KEY)
    header_and_tail = info["header_len"] + info["footer_len"] + 24
    frame_overhead = 120  # META_FRAME_LEN + tag, per block

    src = CountingFile(raw)
    with qeltrix_v6.open_archive(src, key=KEY, cache_blocks=8) as a:
        listed = src.bytes_read
        table_len = len(ref.encode_archive_plaintext(members)) - a.data_len
        table_blocks = table_len // block + 2
        assert listed <= header_and_tail + table_len + table_blocks * (block + frame_overhead)
        assert listed < len(big) // 10  # none of the data
        assert len(a) == 203
        before = src.bytes_read
        m = a.member("d/target")
        assert a.open("d/target").read() == members[100]["data"]
        restored = src.bytes_read - before
        blocks = (m.offset + m.size - 1) // block - m.offset // block + 1
        assert blocks <= m.size // block + 2
        assert restored <= blocks * (block + frame_overhead)


# --- serving members -----------------------------------------------------------------------------


def test_seekserver_serves_members_under_the_archive_path(tmp_path: Path, tree: Path) -> None:
    from conftest import http_request

    root = tmp_path / "root"
    root.mkdir()
    arc.pack_archive([tree], root / "backup.qltx", key=KEY, block_size=4096)
    qeltrix_v6.pack(io.BytesIO(b"plain"), root / "plain.txt.qltx", key=KEY)
    big = (tree / "big.bin").read_bytes()
    with qeltrix_v6.SeekServer(root, key=KEY) as server:
        status, headers, body = http_request(server.address, "/backup.qltx/docs/big.bin")
        assert status == 200 and body == big and headers["content-length"] == str(len(big))
        status, headers, body = http_request(
            server.address, "/backup.qltx/docs/big.bin", {"Range": "bytes=100000-100009"}
        )
        assert status == 206 and body == big[100000:100010]
        assert headers["content-range"] == f"bytes 100000-100009/{len(big)}"
        etag_big = headers["etag"]
        status, headers, body = http_request(server.address, "/backup.qltx/docs/a.txt")
        assert (status, body) == (200, b"hello\n") and headers["content-type"].startswith("text/plain")
        assert headers["etag"] != etag_big
        assert http_request(server.address, "/backup.qltx/docs/hard")[2] == b"hello\n"
        assert http_request(server.address, "/backup.qltx/docs/empty")[:3:2] == (200, b"")
        for missing in ("/backup.qltx/docs/nope", "/backup.qltx/docs/sub", "/backup.qltx/docs/link"):
            assert http_request(server.address, missing)[0] == 404, missing
        for bad in ("/backup.qltx/docs/%2E%2E/a.txt", "/backup.qltx/../backup.qltx/docs/a.txt"):
            assert http_request(server.address, bad)[0] == 404, bad
        assert http_request(server.address, "/plain.txt")[2] == b"plain"
