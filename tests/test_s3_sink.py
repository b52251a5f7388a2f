"""The seed's pipeline on object storage (README "Containers on object storage"): gateway
router -> sink gateway writing to ``s3://`` -> ``qeltrix serve s3://`` -> an HTTP client
seeking with Range requests; ``qeltrix recover`` on a stream whose sink was killed mid-upload;
the S3 server gone in the middle of a ``pack`` upload. Real CLI processes, a real S3 server
(moto) behind the logging, fault-injecting proxy of ``s3util``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_error, http_request, make_plaintext, running_cli
from s3util import Logged, ProxyState, s3_bucket

pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "sink"
READY = r"gateway listening on 127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[ProxyState, Any, dict[str, str]]]:
    with s3_bucket(BUCKET) as (_endpoint, state, client, env):
        yield state, client, env


def cli(*args: object, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)],
        capture_output=True,
        env=env,
        start_new_session=True,
        timeout=timeout,
    )


def keys_under(client: Any, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def uploads_under(client: Any, prefix: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", []))


def wait_for(lines: list[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if m := re.search(pattern, line):
                return m
        time.sleep(0.05)
    pytest.fail(f"no line matching {pattern!r}:\n" + "".join(lines))


def test_router_to_s3_sink_then_serve_s3_answers_range_requests(
    s3: tuple[ProxyState, Any, dict[str, str]], tmp_path: Path, key_file: Path
) -> None:
    state, client, _env = s3
    pt = make_plaintext(3 << 20, "pipeline")
    with running_cli(
        "gateway", "--mode", "sink", "--listen", "127.0.0.1:0", "--sink-dir", f"s3://{BUCKET}/cams/",
        "-k", str(key_file), ready=READY,
    ) as (_sink, sm, slines), running_cli(
        "gateway", "--mode", "router", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{sm.group(1)}",
        "-k", str(key_file), "--block-size", "64KiB", ready=READY,
    ) as (_router, rm, _rlines):  # fmt: skip
        with socket.create_connection(("127.0.0.1", int(rm.group(1))), timeout=60) as s:
            s.sendall(pt)
            s.shutdown(socket.SHUT_WR)
            # The sink acknowledges durable storage with an empty reply: the router half-closes.
            assert s.recv(1) == b""
        stored = wait_for(slines, rf"stored s3://{BUCKET}/cams/(stream-\d+-\d+)\.qltx \(complete\)")
    name = stored.group(1)
    assert keys_under(client, "cams/") == [f"cams/{name}.qltx"]
    assert uploads_under(client, "cams/") == []
    # The object was written as a multipart upload: its parts went out as PUTs, never a GET.
    assert any(r.method == "PUT" and "partNumber=" in r.path for r in state.log)

    serve = ("serve", "--port", "0", "--key-file", str(key_file), f"s3://{BUCKET}/cams")
    with running_cli(*serve, ready=r"serving .* on http://(\S+)") as (_srv, m, _lines):
        host, port = m.group(1).rsplit(":", 1)
        addr = (host, int(port))
        status, headers, body = http_request(addr, f"/{name}")
        assert status == 200 and body == pt
        for start, end in [(0, 0), (1_000_000, 1_065_535), (len(pt) - 70_000, len(pt) - 1), (65_530, 65_545)]:
            status, headers, body = http_request(addr, f"/{name}", {"Range": f"bytes={start}-{end}"})
            assert status == 206, headers
            assert headers["content-range"] == f"bytes {start}-{end}/{len(pt)}"
            assert body == pt[start : end + 1]
        status, _, body = http_request(addr, f"/{name}", {"Range": "bytes=-1000"})
        assert status == 206 and body == pt[-1000:]


def test_recover_gets_back_the_parts_a_killed_sink_had_uploaded(
    s3: tuple[ProxyState, Any, dict[str, str]], tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, client, env = s3
    monkeypatch.setenv("QELTRIX_S3_PART_SIZE", str(5 << 20))  # S3's smallest part
    pt = make_plaintext(16 << 20, "killed")
    with running_cli(
        "gateway", "--mode", "sink", "--sink-raw", "--listen", "127.0.0.1:0",
        "--sink-dir", f"s3://{BUCKET}/raw", "-k", str(key_file), ready=READY,
    ) as (sink, sm, slines):  # fmt: skip
        s = socket.create_connection(("127.0.0.1", int(sm.group(1))), timeout=60)
        sender = threading.Thread(target=lambda: _send_quietly(s, pt), daemon=True)
        sender.start()
        url = wait_for(slines, rf"storing (s3://{BUCKET}/raw/stream-\d+-\d+\.qltx)").group(1)
        key = url.removeprefix(f"s3://{BUCKET}/")

        def parts_done() -> int:
            with state.lock:
                puts = [r for r in state.log if r.method == "PUT" and r.status == 200]
                return sum(1 for r in puts if r.path.split("?")[0].endswith(key) and "partNumber=" in r.path)

        deadline = time.monotonic() + 30
        while parts_done() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert parts_done() >= 2, "".join(slines)
        sink.send_signal(signal.SIGKILL)  # no chance to finish or abort the upload
        sink.wait(10)
        s.close()
        sender.join(10)
    # Nothing is visible under the stream's key; its parts sit in an unfinished upload.
    assert keys_under(client, key) == []
    assert [u["Key"] for u in uploads_under(client, key)] == [key]

    out = tmp_path / "recovered.qltx"
    r = cli("recover", "--key-file", key_file, url, out, env=env)
    assert r.returncode == 0, r.stderr
    assert "INCOMPLETE" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    assert uploads_under(client, key) == []
    plain = tmp_path / "plain.bin"
    r = cli("unpack", "--key-file", key_file, "--allow-incomplete", out, plain, env=env)
    assert r.returncode == 0, r.stderr
    got = plain.read_bytes()
    # Every frame inside the uploaded parts comes back: at least the first 2 x 5 MiB less the
    # header and the one frame cut by the part boundary.
    assert len(got) >= (10 << 20) - (300 << 10), len(got)
    assert got == pt[: len(got)]

    # The same object recovered to s3:// (a multipart upload of the rebuilt container).
    r = cli("recover", "--key-file", key_file, url, f"s3://{BUCKET}/fixed/{os.path.basename(key)}", env=env)
    assert r.returncode == 0, r.stderr
    r = cli(
        "cat", "--key-file", key_file, "--allow-incomplete", f"s3://{BUCKET}/fixed/{os.path.basename(key)}", env=env
    )
    assert r.returncode == 0 and r.stdout == got, r.stderr


def _send_quietly(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        s.sendall(data)  # never half-closed: the stream is still flowing when the sink dies


def test_recover_of_a_missing_s3_key_is_one_line(
    s3: tuple[ProxyState, Any, dict[str, str]], tmp_path: Path, key_file: Path
) -> None:
    _state, _client, env = s3
    r = cli("recover", "--key-file", key_file, f"s3://{BUCKET}/nothing/here.qltx", tmp_path / "o.qltx", env=env)
    assert r.returncode != 0
    assert_one_error(r.stderr, "no unfinished upload")
    assert not (tmp_path / "o.qltx").exists()


def test_pack_fails_cleanly_when_the_s3_server_goes_away_mid_upload(
    s3: tuple[ProxyState, Any, dict[str, str]], tmp_path: Path, key_file: Path
) -> None:
    state, client, env = s3
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 << 20))
    key = "gone/big.qltx"
    seen: dict[str, int] = {"dropped_deletes": 0}

    def outage(entry: Logged) -> bool:
        # The server disappears once the first part has reached it ...
        if entry.method == "PUT" and "partNumber=" in entry.path and key in entry.path:
            state.down = True
            return True
        return False

    def comes_back(entry: Logged) -> bool:
        # ... and stays away through every retry of the parts, until pack, having given up,
        # aborts the upload: the first abort is lost too, its retry reaches the server again.
        if state.down and entry.method == "DELETE" and key in entry.path:
            seen["dropped_deletes"] += 1
            state.down = False
            return True
        return False

    state.hooks += [outage, comes_back]
    env = {**env, "QELTRIX_S3_PART_SIZE": str(5 << 20), "QELTRIX_S3_RETRY_SECONDS": "2"}
    try:
        r = cli("pack", "--key-file", key_file, src, f"s3://{BUCKET}/{key}", env=env, timeout=120)
    finally:
        state.down = False
        for hook in (outage, comes_back):
            if hook in state.hooks:
                state.hooks.remove(hook)
    assert r.returncode not in (0, 2), r.stderr
    assert_one_error(r.stderr, f"s3://{BUCKET}/{key}")
    assert seen["dropped_deletes"] == 1
    assert keys_under(client, "gone/") == []
    assert uploads_under(client, "gone/") == []


def test_a_sink_on_a_missing_bucket_fails_before_listening_with_one_line(
    s3: tuple[ProxyState, Any, dict[str, str]], tmp_path: Path, key_file: Path
) -> None:
    _state, _client, env = s3
    args = ("gateway", "--mode", "sink", "--listen", "127.0.0.1:0", "-k", key_file, "--sink-dir")
    r = cli(*args, "s3://no-such-bucket/streams", env=env)
    assert r.returncode != 0
    assert_one_error(r.stderr, "s3://no-such-bucket/streams/: no such bucket")
    r = cli(*args, "s3://sink/streams", env={k: v for k, v in env.items() if not k.startswith("AWS_ACCESS")})
    assert r.returncode != 0
    assert_one_error(r.stderr, "no AWS credentials")
