"""Incomplete is not OK (FORMAT.md sections 6 and 8; docs/SECURITY.md "Three facts, reported apart").

A container marked INCOMPLETE (a stream cut before its FINAL frame, stored by a sink or rebuilt
by ``recover``) authenticates block by block, but its end is not the end of the data. ``verify``
fails with the truncated exit code (5), ``unpack``/``cat`` and the API raise TruncatedError
when a read reaches that end, the SeekServer refuses it, and ``--allow-incomplete`` /
``allow_incomplete=True`` reads what authenticated with a warning on stderr.

The cut streams here are made the way an on-path attacker or a crash makes them: a stream
(a container packed in plaintext order is header || frames, like a gateway stream) loses its
tail, its FINAL frame, or a middle frame, and ``qeltrix recover`` rebuilds what authenticates.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY  # the key the shared key_file fixture writes

BLOCK = 4096
META_FRAME_LEN = 104
TAG_LEN = 16


def qeltrix(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


@pytest.fixture
def data() -> bytes:
    return os.urandom(10 * BLOCK + 123)


def stream_of(data: bytes, tmp_path: Path) -> tuple[bytes, list[int]]:
    """A stream (header || frames in order, last FINAL) and the offset of each frame."""
    c = tmp_path / "whole.qltx"
    qeltrix_v6.pack(io.BytesIO(data), c, key=KEY, block_size=BLOCK, permute=False)
    raw = c.read_bytes()
    header_len = struct.unpack_from("<I", raw, 10)[0]
    footer_offset = struct.unpack_from("<Q", raw, len(raw) - 24)[0]
    offsets, pos = [], header_len
    while pos < footer_offset:
        offsets.append(pos)
        pt_len = min(BLOCK, len(data) - BLOCK * (len(offsets) - 1))
        pos += META_FRAME_LEN + pt_len + TAG_LEN
    return raw[:footer_offset], offsets


@pytest.fixture
def cut(tmp_path: Path, data: bytes, key_file: Path) -> Path:
    """A stream whose FINAL frame and half the frame before it were dropped, recovered."""
    stream, offsets = stream_of(data, tmp_path)
    part = tmp_path / "cut.part"
    part.write_bytes(stream[: offsets[-2] + 200])
    out = tmp_path / "cut.qltx"
    r = qeltrix("recover", part, out, "--key-file", key_file)
    assert r.returncode == 0, r.stderr
    # recover says what it kept and what it dropped
    kept = offsets[-2]  # the header and every frame before the cut one
    assert f"kept {kept:,} bytes" in r.stderr and f"dropped {200:,}" in r.stderr and "INCOMPLETE" in r.stderr
    return out


def test_verify_of_an_incomplete_container_exits_5_and_says_how_much_is_there(cut: Path, key_file: Path) -> None:
    r = qeltrix("verify", "--key-file", key_file, cut)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "OK" not in r.stdout
    assert "INCOMPLETE" in r.stderr and f"{9 * BLOCK:,} bytes" in r.stderr and "Traceback" not in r.stderr
    r = qeltrix("verify", "--key-file", key_file, "--json", cut)
    assert r.returncode == 5
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["complete"] is False and report["error"] == "truncated"
    r = qeltrix("verify", "--key-file", key_file, "--allow-incomplete", cut)
    assert r.returncode == 0 and "INCOMPLETE" in r.stdout + r.stderr


def test_unpack_refuses_an_incomplete_container_unless_allowed(
    cut: Path, key_file: Path, tmp_path: Path, data: bytes
) -> None:
    out = tmp_path / "out.bin"
    r = qeltrix("unpack", "--key-file", key_file, cut, out)
    assert r.returncode == 5 and "INCOMPLETE" in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    r = qeltrix("unpack", "--key-file", key_file, cut, "-")
    assert r.returncode == 5 and r.stdout == ""  # nothing released to a pipe either
    r = qeltrix("unpack", "--key-file", key_file, "--allow-incomplete", cut, out)
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "INCOMPLETE" in r.stderr
    assert out.read_bytes() == data[: 9 * BLOCK]


def test_cat_reads_what_is_there_but_not_past_the_cut(cut: Path, key_file: Path, data: bytes) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "cat", "--key-file", str(key_file), "--offset", "100", "--length", "5000",
         str(cut)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == data[100:5100]
    r = qeltrix("cat", "--key-file", key_file, "--offset", "100", cut)
    assert r.returncode == 5 and r.stdout == "" and "INCOMPLETE" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "cat", "--key-file", str(key_file), "--allow-incomplete", str(cut)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == data[: 9 * BLOCK] and b"INCOMPLETE" in r.stderr


def test_a_dropped_middle_frame_keeps_only_the_prefix(tmp_path: Path, data: bytes, key_file: Path) -> None:
    stream, offsets = stream_of(data, tmp_path)
    part = tmp_path / "hole.part"
    part.write_bytes(stream[: offsets[4]] + stream[offsets[5] :])  # frame 4 removed
    out = tmp_path / "hole.qltx"
    r = qeltrix("recover", part, out, "--key-file", key_file)
    assert r.returncode == 0 and "INCOMPLETE" in r.stderr and "recovered 4 blocks" in r.stderr, r.stderr
    r = qeltrix("verify", "--key-file", key_file, out)
    assert r.returncode == 5
    info = qeltrix_v6.recover(part, tmp_path / "again.qltx", key=KEY)
    assert info["blocks"] == 4 and not info["complete"]
    assert info["kept_len"] == offsets[4] and info["dropped_len"] == len(part.read_bytes()) - offsets[4]


def test_a_complete_stream_recovers_as_complete(tmp_path: Path, data: bytes, key_file: Path) -> None:
    stream, _ = stream_of(data, tmp_path)
    part = tmp_path / "whole.part"
    part.write_bytes(stream)
    out = tmp_path / "whole2.qltx"
    r = qeltrix("recover", part, out, "--key-file", key_file)
    assert r.returncode == 0 and "INCOMPLETE" not in r.stderr
    r = qeltrix("verify", "--key-file", key_file, out)
    assert r.returncode == 0 and "complete" in r.stdout


def test_a_sink_that_never_saw_final_stores_incomplete_and_verify_exits_5(tmp_path: Path, key_file: Path) -> None:
    """router -> sink; the client resets its connection mid-stream, so no FINAL reaches the
    sink: the stored container is INCOMPLETE and fails verify with 5."""
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    with (
        qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", key=KEY, sink_dir=sink_dir) as sink,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", key=KEY, target=sink.address) as router,
    ):
        s = socket.create_connection(router.address)
        s.sendall(os.urandom(300_000))
        time.sleep(0.5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST: a cut, not a clean end
        deadline = time.monotonic() + 20
        while not list(sink_dir.glob("stream-*.qltx")) and time.monotonic() < deadline:
            time.sleep(0.05)
    (stored,) = sink_dir.glob("stream-*.qltx")
    r = qeltrix("info", "--key-file", key_file, "--json", stored)
    assert json.loads(r.stdout)["complete"] is False
    r = qeltrix("verify", "--key-file", key_file, stored)
    assert r.returncode == 5, r.stdout + r.stderr


def test_seekserver_refuses_an_incomplete_container_unless_allowed(cut: Path, tmp_path: Path, data: bytes) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "v.bin.qltx").write_bytes(cut.read_bytes())
    with qeltrix_v6.SeekServer(root, key=KEY) as server:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "/v.bin", timeout=30)
        assert e.value.code >= 500 and data[:64] not in e.value.read()
    with qeltrix_v6.SeekServer(root, key=KEY, allow_incomplete=True) as server:
        assert urllib.request.urlopen(server.url + "/v.bin", timeout=30).read() == data[: 9 * BLOCK]
