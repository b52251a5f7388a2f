"""Containers on object storage (README "Containers on object storage"): s3:// URLs for the
API and the CLI against a real S3-compatible server (moto's server mode) behind a logging,
fault-injecting proxy, so GETs are counted where they arrive."""

from __future__ import annotations

import contextlib
import io
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import KEY, assert_one_error, http_request, make_plaintext, require, running_cli
from qeltrix_v6 import QeltrixIOError, _container
from s3util import ProxyState, s3_bucket

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "qltx"


@dataclass
class S3:
    endpoint: str
    state: ProxyState
    client: Any
    env: dict[str, str]

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def exists(self, key: str) -> bool:
        return "Contents" in self.client.list_objects_v2(Bucket=BUCKET, Prefix=key)

    def uploads(self) -> list[Any]:
        return list(self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_bucket(BUCKET) as (endpoint, state, client, env):
        yield S3(endpoint, state, client, env)


def cli(*args: object, env: dict[str, str], input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)],
        input=input,
        capture_output=True,
        env=env,
        start_new_session=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def packed(s3: S3) -> tuple[bytes, str]:
    """A 3 MiB container of 64 KiB blocks (permuted) at s3://qltx/data.qltx."""
    pt = make_plaintext(3 << 20, "s3")
    qeltrix_v6.pack(io.BytesIO(pt), s3.url("data.qltx"), key=KEY, block_size=64 << 10)
    return pt, s3.url("data.qltx")


def runs_of_frames(
    reader: Any, offset: int, length: int, gap: int = 1 << 20, held: tuple[tuple[int, int], ...] = ()
) -> int:
    """How many runs of nearby frames (closer than ``gap``) cover the plaintext range, leaving
    out the frames wholly inside ``held`` (bytes the open already fetched)."""
    spans = []
    for i in range(int(reader.block_count)):
        pt_offset, pt_len, frame_offset = reader.block_info(i)
        a, b = frame_offset, frame_offset + pt_len + 32
        if any(lo <= a and b <= hi for lo, hi in held):
            continue
        if pt_offset < offset + length and offset < pt_offset + pt_len:
            spans.append((a, b))
    runs: list[list[int]] = []
    for a, b in sorted(spans):
        if runs and a <= runs[-1][1] + gap:
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b])
    return len(runs)


@pytest.mark.parametrize("permute", [True, False])
def test_open_costs_two_gets_and_a_range_one_per_run_pinned_to_the_etag(s3: S3, permute: bool) -> None:
    pt = make_plaintext(6 << 20, "counts")
    key = f"counts-{permute}.qltx"
    qeltrix_v6.pack(io.BytesIO(pt), s3.url(key), key=KEY, block_size=64 << 10, permute=permute)
    head = s3.client.head_object(Bucket=BUCKET, Key=key)
    for offset, length in [(1_000_000, 65536), (2 << 20, 1 << 20), (4_500_000, 100)]:
        # A fresh open for each range: the count is the range's own, not helped by earlier reads.
        s3.state.log.clear()
        opened = _container.open_reader(s3.url(key), key=KEY)
        try:
            gets = s3.state.gets(key)
            assert len(gets) == 2, [g.headers.get("range") for g in gets]
            assert gets[0].headers["range"] == "bytes=0-65535"
            assert gets[1].headers["range"].startswith("bytes=-")  # one suffix range: trailer + footer
            assert opened.reader.read_at(offset, length) == pt[offset : offset + length]
            size = head["ContentLength"]
            suffix = int(gets[1].headers["range"][len("bytes=-") :])
            # With the keyed permutation a frame may sit in the start or the suffix the open
            # fetched: it costs no GET of its own.
            runs = runs_of_frames(opened.reader, offset, length, held=((0, 65536), (size - suffix, size)))
            assert runs == 1 or permute
            gets = s3.state.gets(key)
            assert len(gets) == 2 + runs
            assert all(g.headers.get("if-match") == head["ETag"] for g in gets[1:])
            assert all(g.headers.get("range") not in (None, f"bytes=0-{size - 1}") for g in gets)
        finally:
            opened.close()


def test_open_seek_extract_unpack_and_pack_over_s3(s3: S3, packed: tuple[bytes, str], tmp_path: Path) -> None:
    pt, url = packed
    assert qeltrix_v6.seek_extract(url, 123_456, 100_000, key=KEY) == pt[123_456:223_456]
    with qeltrix_v6.open(url, key=KEY) as f:
        f.seek(3_000_000)
        assert f.read(50_000) == pt[3_000_000:3_050_000]
    s3.state.log.clear()
    assert qeltrix_v6.unpack(url, tmp_path / "out.bin", key=KEY) == len(pt)
    assert (tmp_path / "out.bin").read_bytes() == pt
    assert all("range" in g.headers for g in s3.state.gets("data.qltx"))  # never a whole download
    # open(url, "wb") streams a multipart upload.
    with qeltrix_v6.open(s3.url("w.qltx"), "wb", key=KEY) as w:
        w.write(pt[:100_000])
    assert qeltrix_v6.seek_extract(s3.url("w.qltx"), 0, 10**9, key=KEY) == pt[:100_000]


def test_pack_refuses_an_existing_object_without_overwrite(s3: S3, packed: tuple[bytes, str]) -> None:
    _, url = packed
    with pytest.raises(QeltrixIOError, match="already exists"):
        qeltrix_v6.pack(io.BytesIO(b"x"), url, key=KEY, overwrite=False)
    assert s3.uploads() == []


def test_an_overwrite_during_a_read_fails_clearly(s3: S3, tmp_path: Path) -> None:
    pt = make_plaintext(1 << 20, "overwrite")
    qeltrix_v6.pack(io.BytesIO(pt), s3.url("ow.qltx"), key=KEY, block_size=64 << 10)
    opened = _container.open_reader(s3.url("ow.qltx"), key=KEY)
    try:
        other = io.BytesIO()
        qeltrix_v6.pack(io.BytesIO(make_plaintext(1 << 20, "other")), other, key=KEY, block_size=64 << 10)
        s3.client.put_object(Bucket=BUCKET, Key="ow.qltx", Body=other.getvalue())
        # The whole plaintext: most of its frames are outside what the open fetched (the start
        # and the suffix), wherever the keyed permutation put them.
        with pytest.raises(QeltrixIOError, match="replaced while it was being read"):
            opened.reader.read_at(0, 1 << 20)
    finally:
        opened.close()


def test_503s_and_dropped_connections_are_retried(s3: S3, packed: tuple[bytes, str]) -> None:
    pt, url = packed
    s3.state.faults[:] = [("503", "GET"), ("drop", "GET"), ("503", "GET"), ("drop", "GET")]
    try:
        assert qeltrix_v6.seek_extract(url, 2_500_000, 300_000, key=KEY) == pt[2_500_000:2_800_000]
        assert s3.state.faults == []
    finally:
        s3.state.faults.clear()


def test_a_failed_upload_leaves_no_object_and_no_parts(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QELTRIX_S3_RETRY_SECONDS", "0.3")
    s3.state.faults[:] = [("503", "PUT")] * 200
    try:
        with pytest.raises(QeltrixIOError):
            qeltrix_v6.pack(
                io.BytesIO(make_plaintext(11 << 20, "fail")), s3.url("fail.qltx"), key=KEY, part_size=5 << 20
            )
    finally:
        s3.state.faults.clear()
    assert not s3.exists("fail.qltx")
    assert s3.uploads() == []


def test_cli_pack_from_stdin_cat_info_verify_unpack(s3: S3, tmp_path: Path) -> None:
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    pt = make_plaintext(600_000, "cli")
    url = s3.url("cli/one.qltx")
    r = cli("pack", "-q", "--key-file", key_file, "--block-size", "64KiB", "-", url, input=pt, env=s3.env)
    assert r.returncode == 0, r.stderr
    r = cli("pack", "-q", "--key-file", key_file, "-", url, input=pt, env=s3.env)
    assert r.returncode == 6
    assert_one_error(r.stderr, "already exists")
    r = cli("pack", "-q", "--force", "--key-file", key_file, "--block-size", "64KiB", "-", url, input=pt, env=s3.env)
    assert r.returncode == 0, r.stderr
    r = cli("cat", "--key-file", key_file, url, "--offset", "100000", "--length", "70000", env=s3.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == pt[100_000:170_000]
    r = cli("info", "--json", "--key-file", key_file, url, env=s3.env)
    assert r.returncode == 0, r.stderr
    assert b'"plaintext_len": 600000' in r.stdout
    r = cli("verify", "--key-file", key_file, url, env=s3.env)
    assert r.returncode == 0, r.stderr
    r = cli("unpack", "-q", "--key-file", key_file, url, tmp_path / "out.bin", env=s3.env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.bin").read_bytes() == pt


def test_cli_ctrl_c_during_an_upload_aborts_it(s3: S3, tmp_path: Path) -> None:
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    env = dict(s3.env, QELTRIX_S3_PART_SIZE=str(5 << 20))
    s3.state.log.clear()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qeltrix_v6",
            "pack",
            "-q",
            "--block-size",
            "64KiB",
            "--key-file",
            str(key_file),
            "-",
            s3.url("int.qltx"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert p.stdin is not None
    try:
        p.stdin.write(make_plaintext(12 << 20, "int"))
        p.stdin.flush()
        deadline = time.monotonic() + 30
        while not any(r.method == "PUT" and "partNumber" in r.path and r.status for r in s3.state.log):
            assert time.monotonic() < deadline, "no part was uploaded"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert not s3.exists("int.qltx")
    assert s3.uploads() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_errors_are_one_line(s3: S3, packed: tuple[bytes, str], tmp_path: Path) -> None:
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    r = cli("cat", "--key-file", key_file, s3.url("missing.qltx"), env=s3.env)
    assert r.returncode == 6
    assert_one_error(r.stderr, "no such object")
    r = cli("cat", "--key-file", key_file, "s3://no-such-bucket/x.qltx", env=s3.env)
    assert r.returncode == 6
    assert_one_error(r.stderr, "s3://no-such-bucket/x.qltx")
    env = {k: v for k, v in s3.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    r = cli("cat", "--key-file", key_file, packed[1], env=env)
    assert r.returncode == 6
    assert_one_error(r.stderr, "no AWS credentials")
    env = dict(s3.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}", QELTRIX_S3_RETRY_SECONDS="0.5")
    r = cli("info", packed[1], env=env)
    assert r.returncode == 6
    assert_one_error(r.stderr, packed[1])


def test_credentials_and_endpoint_from_a_shared_profile(s3: S3, packed: tuple[bytes, str], tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text("[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    (tmp_path / "config").write_text(f"[profile ci]\nregion = us-east-1\nendpoint_url = {s3.endpoint}\n")
    env = {k: v for k, v in s3.env.items() if not k.startswith("AWS_")}
    env.update(
        AWS_PROFILE="ci",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "config"),
    )
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    r = cli("cat", "--key-file", key_file, packed[1], "--offset", "10", "--length", "20", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == packed[0][10:30]


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream replicas {{ server {a}; server {b}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_buffering off;
            add_header X-Replica $upstream_addr always;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(tmp: Path, a: str, b: str) -> Iterator[int]:
    exe = require("nginx")
    port = _free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(d=tmp, a=a, b=b, port=port))
    p = subprocess.Popen([exe, "-p", str(tmp), "-c", str(tmp / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert p.poll() is None and time.monotonic() < deadline, (tmp / "error.log").read_text()
            time.sleep(0.05)
        yield port
    finally:
        p.terminate()
        p.wait(10)


def test_serve_s3_replicas_agree_and_a_download_resumes_across_them(s3: S3, tmp_path: Path) -> None:
    pt = make_plaintext(1 << 20, "serve")
    qeltrix_v6.pack(io.BytesIO(pt), s3.url("site/media/v.bin.qltx"), key=KEY, block_size=64 << 10)
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    serve = ("serve", "--port", "0", "--key-file", str(key_file), f"s3://{BUCKET}/site")
    ready = r"serving .* on http://(\S+)"
    with running_cli(*serve, ready=ready) as (_, m1, _), running_cli(*serve, ready=ready) as (_, m2, _):
        r1, r2 = m1.group(1), m2.group(1)
        answers = []
        for r in (r1, r2):
            host, port = r.rsplit(":", 1)
            status, headers, body = http_request((host, int(port)), "/media/v.bin", {"Range": "bytes=10-19"})
            assert status == 206 and body == pt[10:20]
            answers.append((headers["etag"], headers["last-modified"]))
        assert answers[0] == answers[1]
        etag = answers[0][0]
        host, port = r1.rsplit(":", 1)
        assert http_request((host, int(port)), "/media/missing.bin")[0] == 404
        ngx = tmp_path / "nginx"
        ngx.mkdir()
        with nginx(ngx, r1, r2) as port_lb:
            lb = ("127.0.0.1", port_lb)
            status, h1, first = http_request(lb, "/media/v.bin", {"Range": "bytes=0-399999"})
            assert status == 206 and first == pt[:400_000]
            # The download is resumed on the other replica (round robin), If-Range on the ETag.
            status, h2, rest = http_request(lb, "/media/v.bin", {"Range": "bytes=400000-", "If-Range": etag})
            assert status == 206, h2
            assert h1["x-replica"] != h2["x-replica"]
            assert first + rest == pt


def test_readahead_cap_bounds_memory_not_correctness(s3: S3, packed: tuple[bytes, str], tmp_path: Path) -> None:
    pt, url = packed
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    # No room to hold frames ahead at all: every read still returns the right bytes.
    r = cli("cat", "--key-file", key_file, url, env={**s3.env, "QELTRIX_S3_READAHEAD_BYTES": "0"})
    assert r.returncode == 0 and r.stdout == pt, r.stderr
    r = cli("cat", "--key-file", key_file, url, env={**s3.env, "QELTRIX_S3_READAHEAD_BYTES": "lots"})
    assert r.returncode != 0
    assert_one_error(r.stderr, "QELTRIX_S3_READAHEAD_BYTES")
