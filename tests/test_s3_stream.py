"""A long sequential read of an s3:// container (a whole download through ``qeltrix serve``,
``cat``, ``unpack``) is one streamed GET pinned to the ETag seen at open (for a read of the
whole container, the open's own first GET streams on): a body cut in the middle is resumed
from the byte it reached, an overwrite fails clearly (README "Containers on
object storage"). Real moto server behind the counting, fault-injecting proxy."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import KEY, http_request, make_plaintext, running_cli
from qeltrix_v6 import QeltrixIOError, _container
from s3util import Logged, ProxyState, s3_bucket

pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "qltxstream"
# Frames spanning more than the 8 MiB a ranged GET fetches at once: such reads stream.
SIZE = 20 << 20


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[ProxyState, Any, dict[str, str]]]:
    with s3_bucket(BUCKET) as (_, state, client, env):
        yield state, client, env


@pytest.fixture(scope="module")
def big(s3: tuple[ProxyState, Any, dict[str, str]]) -> bytes:
    pt = make_plaintext(SIZE, "stream")
    qeltrix_v6.pack(io.BytesIO(pt), f"s3://{BUCKET}/big.qltx", key=KEY)
    return pt


def gets(state: ProxyState, key: str) -> list[Logged]:
    return state.gets(key)


def head_etag(client: Any, key: str) -> tuple[str, int]:
    h = client.head_object(Bucket=BUCKET, Key=key)
    return h["ETag"], int(h["ContentLength"])


def assert_streamed_from_the_open(log: list[Logged], etag: str) -> None:
    """A read of the whole container costs the two GETs of its open and no more: the first
    asks for the whole object and streams on past the header, the second is the suffix with
    the index, pinned to the ETag the first one saw."""
    ranges = [g.headers.get("range") for g in log]
    assert len(log) == 2, ranges
    assert ranges[0] == "bytes=0-" and str(ranges[1]).startswith("bytes=-"), ranges
    assert log[1].headers.get("if-match") == etag


def test_a_whole_download_through_serve_is_one_streamed_get(
    s3: tuple[ProxyState, Any, dict[str, str]], big: bytes, key_file: Path
) -> None:
    state, client, _ = s3
    etag, _ = head_etag(client, "big.qltx")
    state.log.clear()
    serve = ("serve", "--port", "0", "--block-cache", "0", "--key-file", str(key_file), f"s3://{BUCKET}")
    with running_cli(*serve, ready=r"serving .* on http://(\S+)") as (_, m, _):
        host, port = m.group(1).rsplit(":", 1)
        status, _, body = http_request((host, int(port)), "/big", timeout=60)
        assert status == 200 and body == big, (status, len(body))
        assert_streamed_from_the_open(gets(state, "big.qltx"), etag)
        # The rest of the file from the middle (a resumed download): one more GET, from there.
        state.log.clear()
        status, _, body = http_request((host, int(port)), "/big", {"Range": "bytes=9000000-"}, timeout=60)
        assert status == 206 and body == big[9_000_000:]
        later = gets(state, "big.qltx")
        assert len(later) <= 1, [g.headers.get("range") for g in later]


def test_cat_and_unpack_of_s3_are_one_streamed_get_each(
    s3: tuple[ProxyState, Any, dict[str, str]], big: bytes, key_file: Path, tmp_path: Path
) -> None:
    state, client, env = s3
    etag, _ = head_etag(client, "big.qltx")
    url = f"s3://{BUCKET}/big.qltx"
    cli = [sys.executable, "-m", "qeltrix_v6"]
    state.log.clear()
    r = subprocess.run([*cli, "cat", "--key-file", str(key_file), url], capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == big
    assert_streamed_from_the_open(gets(state, "big.qltx"), etag)
    state.log.clear()
    out = tmp_path / "out.bin"
    r = subprocess.run([*cli, "unpack", "-q", "--key-file", str(key_file), url, str(out)], env=env, timeout=120)
    assert r.returncode == 0
    assert out.read_bytes() == big
    assert_streamed_from_the_open(gets(state, "big.qltx"), etag)
    # No room for bytes ahead: the stream is read as it is consumed, the bytes still right.
    r = subprocess.run(
        [*cli, "cat", "--key-file", str(key_file), url],
        capture_output=True,
        env={**env, "QELTRIX_S3_READAHEAD_BYTES": "0"},
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout == big, r.stderr


def test_a_stream_cut_in_the_middle_resumes_from_the_byte_it_reached(
    s3: tuple[ProxyState, Any, dict[str, str]], big: bytes
) -> None:
    state, client, _ = s3
    etag, size = head_etag(client, "big.qltx")
    opened = _container.open_reader(f"s3://{BUCKET}/big.qltx", key=KEY)
    try:
        state.log.clear()
        state.faults[:] = [("cut", "GET")]
        assert opened.reader.read_at(0, SIZE) == big
        assert state.faults == []
    finally:
        state.faults.clear()
        opened.close()
    log = gets(state, "big.qltx")
    ranges = [g.headers.get("range") for g in log]
    assert len(log) == 2, ranges
    assert ranges[0] == f"bytes=0-{size - 1}"
    # The resumed GET starts where the cut body stopped (half of it), not at the start again.
    resumed_from = int(str(ranges[1]).removeprefix("bytes=").split("-")[0])
    assert size // 4 < resumed_from <= size // 2 + 1, ranges
    assert ranges[1] == f"bytes={resumed_from}-{size - 1}"
    assert all(g.headers.get("if-match") == etag for g in log)


def test_an_overwrite_during_a_streamed_read_fails_clearly(s3: tuple[ProxyState, Any, dict[str, str]]) -> None:
    state, client, _ = s3
    pt = make_plaintext(SIZE, "first")
    other = io.BytesIO()
    qeltrix_v6.pack(io.BytesIO(make_plaintext(SIZE, "second")), other, key=KEY)
    url = f"s3://{BUCKET}/ow.qltx"
    qeltrix_v6.pack(io.BytesIO(pt), url, key=KEY)
    opened = _container.open_reader(url, key=KEY)
    try:
        # The stream is cut halfway; before its resumption reaches the server, another writer
        # replaces the object: the resumed GET (If-Match) is refused, nothing of the new
        # version is returned.
        def overwrite(entry: Logged) -> bool:
            resumed = not entry.headers.get("range", "").startswith("bytes=0-")
            if entry.method == "GET" and entry.path.split("?")[0].endswith("/ow.qltx") and resumed:
                client.put_object(Bucket=BUCKET, Key="ow.qltx", Body=other.getvalue())
                return True
            return False

        state.log.clear()
        state.faults[:] = [("cut", "GET")]
        state.hooks.append(overwrite)
        opened.reader.read_ahead(0, SIZE)
        got: list[bytes] = []
        with pytest.raises(QeltrixIOError, match="replaced while it was being read"):
            for off in range(0, SIZE, 1 << 20):
                got.append(opened.reader.read_at(off, 1 << 20))
        # What was returned is the first version's, up to where it stopped.
        assert b"".join(got) == pt[: len(got) << 20]
        assert state.hooks == []
        log = gets(state, "ow.qltx")
        assert log[0].headers.get("range", "").startswith("bytes=0-")
        assert all(g.status == 412 for g in log[1:]), [(g.headers.get("range"), g.status) for g in log]
    finally:
        state.faults.clear()
        state.hooks.clear()
        opened.close()


def test_streams_beyond_the_cap_fall_back_to_ranged_gets(
    s3: tuple[ProxyState, Any, dict[str, str]], big: bytes, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream keeps a permutation window of bytes behind its reader even while paused, so a
    server does not start more streams than fit under QELTRIX_S3_READAHEAD_BYTES: with room for
    one, a download that starts while another streams is served by ranged GETs, byte-exact."""
    import socket

    other = make_plaintext(SIZE, "stream-other")
    qeltrix_v6.pack(io.BytesIO(other), f"s3://{BUCKET}/other.qltx", key=KEY)
    state, _, _ = s3
    monkeypatch.setenv("QELTRIX_S3_READAHEAD_BYTES", str(40 << 20))  # one stream's 36 MiB share
    serve = ("serve", "--port", "0", "--block-cache", "0", "--key-file", str(key_file), f"s3://{BUCKET}")
    with running_cli(*serve, ready=r"serving .* on http://(\S+)") as (_, m, _):
        host, port = m.group(1).rsplit(":", 1)
        # A download that stalls after 1 MiB: its stream stays open, paused by back-pressure.
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            slow.sendall(f"GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            got = 0
            while got < 1 << 20:
                got += len(slow.recv(65536))
            state.log.clear()
            status, _, body = http_request((host, int(port)), "/other", timeout=60)
            assert status == 200 and body == other, (status, len(body))
            data = gets(state, "other.qltx")[2:]  # after the two GETs that open it
            ranges = [g.headers.get("range") for g in data]
            assert len(data) > 1, ranges  # one GET would be a stream
            assert all(g.headers.get("if-match") for g in data), ranges


def test_only_a_read_of_the_whole_container_opens_with_a_stream(
    s3: tuple[ProxyState, Any, dict[str, str]], big: bytes, key_file: Path
) -> None:
    """A ranged request opens with the first 64 KiB, as a random read must (a stream would pull
    megabytes nobody asked for); `Range: bytes=0-`, a browser's first request, reads all of it
    and opens with the stream. Each case gets a server of its own, so each opens the object."""
    state, client, _ = s3
    etag, _ = head_etag(client, "big.qltx")
    serve = ("serve", "--port", "0", "--block-cache", "0", "--key-file", str(key_file), f"s3://{BUCKET}")
    for asked, want in (("bytes=5000000-5065535", big[5_000_000:5_065_536]), ("bytes=0-", big)):
        with running_cli(*serve, ready=r"serving .* on http://(\S+)") as (_, m, _):
            host, port = m.group(1).rsplit(":", 1)
            state.log.clear()
            status, _, body = http_request((host, int(port)), "/big", {"Range": asked}, timeout=60)
            assert status == 206 and body == want
            log = gets(state, "big.qltx")
            if asked == "bytes=0-":
                assert_streamed_from_the_open(log, etag)
            else:
                ranges = [g.headers.get("range") for g in log]
                assert ranges[0] == "bytes=0-65535" and len(ranges) == 3, ranges
