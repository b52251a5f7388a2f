"""The ``qltx`` fsspec file system and the data tools that read through it (README section
"Reading encrypted data with pandas, DuckDB and friends")."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import ARGON2_SMALL, KEY, make_plaintext

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem  # noqa: E402

BLOCK = 64 << 10


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    p = tmp_path / "k.key"
    p.write_bytes(KEY)
    return str(p)


def pack_file(src: Path, dst: Path, block_size: int = BLOCK) -> None:
    qeltrix_v6.pack(str(src), str(dst), key=KEY, block_size=block_size)


class CountingFileSystem(LocalFileSystem):  # type: ignore[misc]
    """The real local file system, counting the bytes read from the files it opens."""

    protocol = "countedfile"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bytes_read = 0
        self.reads: list[tuple[int, int]] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        fs = self

        class Counted(LocalFileOpener):  # type: ignore[misc]
            def fileno(self) -> int:
                raise io.UnsupportedOperation("counted: read through the file object")

            def readinto(self, b: Any) -> int:
                pos = self.f.tell()
                n: int = self.f.readinto(b)
                fs.bytes_read += n
                fs.reads.append((pos, n))
                return n

            def read(self, n: int = -1) -> bytes:
                pos = self.f.tell()
                data: bytes = self.f.read(n)
                fs.bytes_read += len(data)
                fs.reads.append((pos, len(data)))
                return data

        return Counted(path, mode, fs=self, **kwargs)


def test_entry_point_registers_qltx_without_importing_qeltrix(tmp_path: Path, key_file: str) -> None:
    src = tmp_path / "t.txt"
    src.write_bytes(b"hello, encrypted world\n" * 1000)
    pack_file(src, tmp_path / "t.txt.qltx")
    code = (
        "import sys, fsspec\n"
        f"with fsspec.open('qltx::file://{tmp_path}/t.txt.qltx', qltx={{'key_file': {key_file!r}}}) as f:\n"
        "    f.seek(23 * 999)\n"
        "    sys.stdout.write(f.read().decode())\n"
        "assert 'qeltrix_v6' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "hello, encrypted world\n"


def test_open_read_seek_info_ls(tmp_path: Path, key_file: str) -> None:
    pt = make_plaintext(300_000, "fs")
    (tmp_path / "a.bin").write_bytes(pt)
    (tmp_path / "d").mkdir()
    pack_file(tmp_path / "a.bin", tmp_path / "d" / "a.bin.qltx")
    (tmp_path / "d" / "notes.txt").write_text("not a container")
    url = f"qltx::file://{tmp_path}/d/a.bin.qltx"
    with fsspec.open(url, "rb", qltx={"key_file": key_file}) as f:
        assert f.seekable()
        f.seek(123_456)
        assert f.read(1000) == pt[123_456:124_456]
        f.seek(-10, 2)
        assert f.read() == pt[-10:]
        f.seek(7)
        assert f.read(290_000) == pt[7:290_007]  # several blocks: decrypted on several threads
        assert f.tell() == 290_007
    fs, path = fsspec.url_to_fs(url, qltx={"key_file": key_file})
    assert path == f"{tmp_path}/d/a.bin.qltx"
    info = fs.info(path)
    assert info["size"] == len(pt)
    assert info["stored_size"] == os.path.getsize(tmp_path / "d" / "a.bin.qltx")
    names = fs.ls(f"{tmp_path}/d", detail=False)
    assert names == [f"{tmp_path}/d/a.bin.qltx"]  # only containers (and directories) are listed
    assert fs.cat_file(path, start=299_990) == pt[-10:]


def test_memory_target_and_streaming_write(tmp_path: Path, key_file: str) -> None:
    pt = make_plaintext(200_000, "mem")
    opts = {"qltx": {"key_file": key_file, "pack_options": {"block_size": 4096}}}
    with fsspec.open("qltx::memory://bucket/x.bin.qltx", "wb", **opts) as f:
        for i in range(0, len(pt), 7000):
            f.write(pt[i : i + 7000])
    stored = fsspec.filesystem("memory").cat_file("/bucket/x.bin.qltx")
    assert stored[:4] != pt[:4] and len(stored) > len(pt)
    assert qeltrix_v6.seek_extract(io.BytesIO(stored), 0, len(pt), key=KEY) == pt
    with fsspec.open("qltx::memory://bucket/x.bin.qltx", "rb", **opts) as f:
        f.seek(150_001)
        assert f.read(5) == pt[150_001:150_006]


def test_local_write_is_atomic(tmp_path: Path, key_file: str) -> None:
    fs = fsspec.filesystem("qltx", key_file=key_file)
    dst = tmp_path / "out.bin.qltx"
    with pytest.raises(RuntimeError), fs.open(str(dst), "wb") as f:
        f.write(b"partial")
        raise RuntimeError("stop")
    assert not dst.exists()
    with fs.open(str(dst), "wb") as f:
        f.write(b"complete")
    assert fs.cat_file(str(dst)) == b"complete"


def test_credentials(tmp_path: Path, key_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QELTRIX_PASSPHRASE", raising=False)
    with pytest.raises(ValueError, match="no credentials"):
        fsspec.filesystem("qltx", skip_instance_cache=True)
    (tmp_path / "short.key").write_bytes(b"x" * 31)
    with pytest.raises(ValueError, match="exactly 32 raw bytes"):
        fsspec.filesystem("qltx", key_file=str(tmp_path / "short.key"))
    src = tmp_path / "p.txt"
    src.write_bytes(b"by passphrase")
    qeltrix_v6.pack(str(src), str(tmp_path / "p.txt.qltx"), passphrase="pw", kdf_params=ARGON2_SMALL)
    monkeypatch.setenv("QELTRIX_PASSPHRASE", "pw")
    assert (
        fsspec.filesystem("qltx", skip_instance_cache=True).cat_file(str(tmp_path / "p.txt.qltx")) == b"by passphrase"
    )
    (tmp_path / "pw.txt").write_text("wrong\n")
    with pytest.raises(qeltrix_v6.WrongKeyError):
        fsspec.filesystem("qltx", passphrase_file=str(tmp_path / "pw.txt")).cat_file(str(tmp_path / "p.txt.qltx"))


def test_tampered_block_fails_only_reads_that_touch_it(tmp_path: Path, key_file: str) -> None:
    pt = make_plaintext(5 * 4096, "tamper")
    (tmp_path / "t.bin").write_bytes(pt)
    pack_file(tmp_path / "t.bin", tmp_path / "t.bin.qltx", block_size=4096)
    with qeltrix_v6.open(str(tmp_path / "t.bin.qltx"), key=KEY) as f:
        frame_offset = f._opened.reader.block_info(2)[2]
    raw = bytearray((tmp_path / "t.bin.qltx").read_bytes())
    raw[frame_offset + 40] ^= 1
    (tmp_path / "t.bin.qltx").write_bytes(raw)
    fs = fsspec.filesystem("qltx", key_file=key_file)
    with fs.open(str(tmp_path / "t.bin.qltx")) as f:
        assert f.read(4096) == pt[:4096]
        f.seek(3 * 4096)
        assert f.read(4096) == pt[3 * 4096 : 4 * 4096]
        f.seek(2 * 4096 + 100)
        with pytest.raises(qeltrix_v6.AuthenticationError):
            f.read(10)


# --- data tools --------------------------------------------------------------------------


def wide_table(rows: int = 40_000, cols: int = 16) -> Any:
    pa = pytest.importorskip("pyarrow")
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    data = {f"c{i}": rng.random(rows) for i in range(cols)}
    data["id"] = np.arange(rows)
    return pa.table(data)


@pytest.fixture
def parquet_container(tmp_path: Path) -> tuple[Path, Any]:
    pq = pytest.importorskip("pyarrow.parquet")
    table = wide_table()
    plain = tmp_path / "t.parquet"
    pq.write_table(table, plain, compression="none", row_group_size=20_000)
    pack_file(plain, tmp_path / "t.parquet.qltx")
    return tmp_path / "t.parquet.qltx", table


def test_pandas_and_pyarrow_read_parquet(parquet_container: tuple[Path, Any], key_file: str) -> None:
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    path, table = parquet_container
    url = f"qltx::file://{path}"
    df = pd.read_parquet(url, columns=["c3", "id"], storage_options={"qltx": {"key_file": key_file}})
    assert df["c3"].tolist() == table["c3"].to_pylist()
    fs = fsspec.filesystem("qltx", key_file=key_file)
    got = pq.read_table(str(path), columns=["c5"], filesystem=fs)
    assert got.equals(table.select(["c5"]))


def test_one_column_fetches_only_its_chunks(parquet_container: tuple[Path, Any], key_file: str) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path, table = parquet_container
    counting = CountingFileSystem()
    fs = fsspec.filesystem("qltx", fs=counting, key_file=key_file, skip_instance_cache=True)
    got = pq.read_table(str(path), columns=["c7"], filesystem=fs)
    assert got.equals(table.select(["c7"]))
    # The bound: the column's chunks, one block at each end of each chunk, the Parquet footer
    # (pyarrow reads the last 64 KiB) and the container's own header, index and trailer.
    with qeltrix_v6.open(str(path), key=KEY) as f:
        reader = f._opened.reader
        frames = sorted(reader.block_info(i)[::-1][:2] for i in range(reader.block_count))  # (offset, pt_len)
        overhead = frames[1][0] - frames[0][0] - frames[0][1]  # per frame: meta, nonce, tag
        container_meta = reader.header_len + reader.file_len - (frames[-1][0] + frames[-1][1] + overhead)

    def covering(n: int) -> int:  # the frames of the blocks that cover n plaintext bytes
        return n + 2 * BLOCK + overhead * (n // BLOCK + 2)

    meta = pq.ParquetFile(str(path).removesuffix(".qltx")).metadata
    col = meta.schema.names.index("c7")
    allowed = container_meta + covering(64 << 10)  # pyarrow reads the footer as the last 64 KiB
    for rg in range(meta.num_row_groups):
        allowed += covering(meta.row_group(rg).column(col).total_compressed_size)
    print(f"fetched {counting.bytes_read} of {os.path.getsize(path)} bytes (bound {allowed})")
    assert counting.bytes_read <= allowed, (counting.bytes_read, allowed)
    assert counting.bytes_read < os.path.getsize(path) / 4  # 17 columns: far from the whole file


def test_pandas_read_csv(tmp_path: Path, key_file: str) -> None:
    pd = pytest.importorskip("pandas")
    csv = tmp_path / "t.csv"
    csv.write_text("city,temp\n" + "".join(f"c{i},{i % 40}\n" for i in range(5000)))
    pack_file(csv, tmp_path / "t.csv.qltx")
    df = pd.read_csv(f"qltx::file://{tmp_path}/t.csv.qltx", storage_options={"qltx": {"key_file": key_file}})
    assert len(df) == 5000 and df["temp"].sum() == sum(i % 40 for i in range(5000))


def test_duckdb_read_parquet_with_filter(parquet_container: tuple[Path, Any], key_file: str) -> None:
    duckdb = pytest.importorskip("duckdb")
    path, table = parquet_container
    con = duckdb.connect()
    con.register_filesystem(fsspec.filesystem("qltx", key_file=key_file))
    n, total = con.execute(f"SELECT count(*), sum(id) FROM read_parquet('qltx://{path}') WHERE c2 < 0.25").fetchone()
    ids = [i for i, v in zip(table["id"].to_pylist(), table["c2"].to_pylist(), strict=True) if v < 0.25]
    assert (n, total) == (len(ids), sum(ids))


def test_dask_reads_a_directory_of_encrypted_parquet(tmp_path: Path, key_file: str) -> None:
    dd = pytest.importorskip("dask.dataframe")
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    (tmp_path / "parts").mkdir()
    for i in range(3):
        plain = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"part": [i] * 100, "v": list(range(100))}), plain)
        pack_file(plain, tmp_path / "parts" / f"part-{i}.parquet.qltx")
    ddf = dd.read_parquet(
        f"qltx::file://{tmp_path}/parts",
        storage_options={"qltx": {"key_file": key_file}},
        parquet_file_extension=".parquet.qltx",
    )
    df = ddf.compute()
    assert len(df) == 300 and sorted(set(df["part"])) == [0, 1, 2] and df["v"].sum() == 3 * sum(range(100))


def test_identity_file_reads_and_recipients_write(tmp_path: Path) -> None:
    from qeltrix_v6 import _crypto, _pubkeys

    priv, pub = _crypto.x25519_generate()
    (tmp_path / "me.id").write_bytes(priv)
    recipient = _pubkeys.encode_public_key(pub)
    writer = fsspec.filesystem("qltx", recipients=[recipient], skip_instance_cache=True)
    with writer.open(str(tmp_path / "for-me.txt.qltx"), "wb") as f:
        f.write(b"sealed to a public key")
    with pytest.raises(ValueError, match="can write, not read"):
        writer.cat_file(str(tmp_path / "for-me.txt.qltx"))
    reader = fsspec.filesystem("qltx", identity_file=str(tmp_path / "me.id"), skip_instance_cache=True)
    assert reader.cat_file(str(tmp_path / "for-me.txt.qltx")) == b"sealed to a public key"
    (tmp_path / "bad.id").write_bytes(b"not a key")
    with pytest.raises(ValueError, match="identity file"):
        fsspec.filesystem("qltx", identity_file=str(tmp_path / "bad.id"))
