"""SeekServer operations (issue 10): HTTP/2, the access log, client aborts, stats(), Prometheus
metrics and graceful drain. Real clients (curl, urllib, sockets) on 127.0.0.1; every body is
compared byte for byte with the plaintext."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY, make_plaintext, require, running_cli, self_signed_cert

DATA = make_plaintext(600_000, "ops")
BIG = make_plaintext(24 << 20, "ops-big")  # larger than loopback socket buffers
# Larger than what loopback socket buffers and a pipe hold, so a download whose client stops
# reading is still being sent by the server.
SLOW = make_plaintext(24 << 20, "ops-slow")
# Liveness bound only (a broken drain or abort would hang, not be slower).
WAIT_S = 30.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("ops")
    qeltrix_v6.pack(io.BytesIO(DATA), r / "data.bin.qltx", key=KEY, block_size=16 * 1024)
    qeltrix_v6.pack(io.BytesIO(BIG), r / "big.bin.qltx", key=KEY)
    qeltrix_v6.pack(io.BytesIO(SLOW), r / "slow.bin.qltx", key=KEY, block_size=64 * 1024)
    (r / "key").write_bytes(KEY)
    return r


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost: (cert.pem, key.pem)."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def curl(args: list[str], out: Path) -> tuple[str, dict[str, str]]:
    """Run curl writing the body to `out`; return (http_version, response headers)."""
    hdrs = out.with_suffix(".headers")
    r = subprocess.run(
        [require("curl"), "-sS", "--fail", "-o", str(out), "-D", str(hdrs), "-w", "%{http_version}", *args],
        capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    headers = {}
    for line in hdrs.read_text("latin-1").splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return r.stdout, headers


def multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The (Content-Range, payload) of each part of a multipart/byteranges body."""
    msg = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts = []
    for p in msg.get_payload():  # type: ignore[union-attr]
        payload = p.get_payload(decode=True)
        # email keeps the CRLF before the next boundary out of the payload, as RFC 2046 says.
        parts.append((p["Content-Range"], payload))
    return parts


@pytest.mark.parametrize("transport", ["tls-alpn", "h2c", "http1.1"])
def test_http2_with_curl(root: Path, cert: tuple[Path, Path], tmp_path: Path, transport: str) -> None:
    tls = transport == "tls-alpn"
    kwargs = {"tls_cert": cert[0], "tls_key": cert[1]} if tls else {}
    with qeltrix_v6.SeekServer(root, key=KEY, **kwargs) as server:  # type: ignore[arg-type]
        base = f"https://localhost:{server.port}" if tls else server.url
        flags = {
            "tls-alpn": ["--http2", "--cacert", str(cert[0])],
            "h2c": ["--http2-prior-knowledge"],
            "http1.1": ["--http1.1"],
        }[transport]
        want_version = "1.1" if transport == "http1.1" else "2"

        version, h = curl([*flags, "-r", "1000-70999", f"{base}/data.bin"], tmp_path / "single")
        assert (version, h["content-range"]) == (want_version, f"bytes 1000-70999/{len(DATA)}")
        assert (tmp_path / "single").read_bytes() == DATA[1000:71000]

        version, h = curl([*flags, "-r", "0-9,300000-300099,599990-", f"{base}/data.bin"], tmp_path / "multi")
        assert version == want_version
        assert h["content-type"].startswith("multipart/byteranges; boundary=")
        parts = multipart((tmp_path / "multi").read_bytes(), h["content-type"])
        assert parts == [
            (f"bytes 0-9/{len(DATA)}", DATA[0:10]),
            (f"bytes 300000-300099/{len(DATA)}", DATA[300000:300100]),
            (f"bytes 599990-599999/{len(DATA)}", DATA[599990:]),
        ]

        version, h = curl([*flags, f"{base}/data.bin"], tmp_path / "full")
        assert (version, h["content-length"]) == (want_version, str(len(DATA)))
        assert (tmp_path / "full").read_bytes() == DATA

        # Several streams on one connection: curl multiplexes parallel transfers over HTTP/2.
        # (Not with h2c: curl before 8.0 fails to reuse a prior-knowledge connection, curl #10634.)
        outs = [tmp_path / f"par{i}" for i in range(4 if transport != "h2c" else 0)]
        args = ["--parallel", "--parallel-max", "4"]
        for i, out in enumerate(outs):
            args += [*(["--next"] if i else []), *flags, "-sS", "--fail", "-o", str(out)]
            args += ["-r", f"{i * 100_000}-{i * 100_000 + 99_999}", f"{base}/data.bin"]
        if outs:
            r = subprocess.run([require("curl"), *args], capture_output=True, text=True, timeout=WAIT_S)
            assert r.returncode == 0, r.stderr
        for i, out in enumerate(outs):
            assert out.read_bytes() == DATA[i * 100_000 : (i + 1) * 100_000]

        stats = server.stats()
        assert stats["requests"]["2xx"] == 3 + len(outs)  # type: ignore[index]
        if transport == "http1.1":
            assert stats["http2_connections"] == 0
        else:
            assert 1 <= stats["http2_connections"] <= stats["connections_total"]  # type: ignore[operator]
        # A stalled or finished stream holds nothing: all responses are done.
        assert stats["responses_in_flight"] == 0


def test_access_log_combined_with_aborted_client(root: Path, tmp_path: Path) -> None:
    """`--access-log` from the CLI, shown even with --quiet: one combined line per response
    (after it ends) with the bytes really sent; a client that goes away mid-body is no error."""
    with running_cli(
        "serve", "--port", "0", "--key-file", str(root / "key"), "--access-log", "--quiet",
        "--metrics", "127.0.0.1:0", str(root),
        ready=r"serving .* on (http://\S+)",
    ) as (_, m, lines):  # fmt: skip
        base = m.group(1)
        curl(
            ["-r", "10-19", "-A", 'agent "x"', "-e", "http://ref.example/", f"{base}/data.bin?sig=SECRET"],
            tmp_path / "a",
        )
        curl(["--http2-prior-knowledge", f"{base}/data.bin"], tmp_path / "b")
        # curl aborts when its reader (head) goes away after 64 KiB of a 24 MiB body.
        r = subprocess.run(
            f"{require('curl')} -sS {base}/big.bin | head -c 65536 > /dev/null", shell=True, timeout=WAIT_S
        )
        assert r.returncode == 0
        combined = re.compile(
            r'^(?P<client>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] '
            r'"(?P<method>\S+) (?P<path>\S+) (?P<proto>HTTP/[\d.]+)" (?P<status>\d{3}) (?P<bytes>\d+) '
            r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)" "(?P<range>(?:[^"\\]|\\.)*)" (?P<secs>\d+\.\d+)$'
        )  # fmt: skip

        def access() -> list[re.Match[str]]:
            found = []
            for line in lines:
                hit = combined.search(line.split(": ", 1)[-1].rstrip("\n"))
                if hit:
                    found.append(hit)
            return found

        deadline = time.monotonic() + WAIT_S
        while len(access()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = access()
        assert len(got) == 3, "".join(lines)
        first, second, aborted = got
        assert first.group("client", "method", "path", "proto", "status", "bytes") == (
            "127.0.0.1", "GET", "/data.bin", "HTTP/1.1", "206", "10",
        )  # fmt: skip
        assert "SECRET" not in "".join(lines)  # the query string is not logged
        assert first.group("referer", "ua", "range") == ("http://ref.example/", 'agent \\"x\\"', "bytes=10-19")
        assert second.group("proto", "status", "bytes", "range") == ("HTTP/2.0", "200", str(len(DATA)), "-")
        assert aborted.group("status") == "200"
        assert 65536 <= int(aborted.group("bytes")) < len(BIG)
        assert not [line for line in lines if " ERROR: " in line or "Traceback" in line]
        # --metrics from the CLI: the same counters on their own port.
        metrics_url = next(hit.group(1) for line in lines if (hit := re.match(r"metrics on (\S+)", line)))
        with urllib.request.urlopen(metrics_url, timeout=WAIT_S) as resp:
            text = resp.read().decode()
        assert re.search(r'^qeltrix_seek_requests_total\{code="2xx"\} 3$', text, re.M), text
        assert re.search(r"^qeltrix_seek_client_aborts_total 1$", text, re.M), text


def test_access_log_json_stats_and_metrics(root: Path) -> None:
    """The API: JSON access lines on the `qeltrix_v6.server.access` logger, `stats()` and the
    Prometheus endpoint agree with the requests made, per-client refusals are counted."""
    from prometheus_client.parser import text_string_to_metric_families

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("qeltrix_v6.server")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with qeltrix_v6.SeekServer(
            root, key=KEY, access_log="json", metrics="127.0.0.1:0", max_connections_per_client=2
        ) as server:
            assert server.metrics_url is not None
            sent = 0
            for rng in ("bytes=0-99", "bytes=500-", "bytes=5-5"):
                req = urllib.request.Request(server.url + "/data.bin", headers={"Range": rng, "User-Agent": "ua/1"})
                with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
                    body = resp.read()
                    assert resp.status == 206
                    sent += len(body)
            with pytest.raises(urllib.error.HTTPError) as e404:
                urllib.request.urlopen(server.url + "/missing.bin", timeout=WAIT_S)
            sent += len(e404.value.read())
            # Two idle connections use the per-client allowance; a third is closed at accept.
            held = [socket.create_connection(server.address) for _ in range(2)]
            extra = socket.create_connection(server.address)
            extra.settimeout(WAIT_S)
            assert extra.recv(1) == b""  # closed by the server
            for s in [*held, extra]:
                s.close()

            deadline = time.monotonic() + WAIT_S
            while server.stats()["connections_active"] and time.monotonic() < deadline:
                time.sleep(0.02)
            stats = server.stats()
            with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=WAIT_S) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = resp.read().decode()
            with urllib.request.urlopen(server.metrics_url + "/healthz", timeout=WAIT_S) as resp:
                assert (resp.status, resp.read()) == (200, b"ok\n")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("qeltrix_seek_") and family.documentation
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("qeltrix_seek_requests_total", (("code", "2xx"),))] == 3
    assert samples[("qeltrix_seek_requests_total", (("code", "4xx"),))] == 1
    assert samples[("qeltrix_seek_sent_bytes_total", ())] == sent
    assert samples[("qeltrix_seek_connections_refused_total", (("reason", "per_client_limit"),))] == 1
    assert samples[("qeltrix_seek_connections_refused_total", (("reason", "total_limit"),))] == 0
    assert samples[("qeltrix_seek_connections_total", ())] == 6
    assert samples[("qeltrix_seek_connections_active", ())] == 0
    assert samples[("qeltrix_seek_open_cache_misses_total", ())] == 1  # opened once, then reused
    assert samples[("qeltrix_seek_open_cache_hits_total", ())] == 2
    # stats() reports the same counters.
    assert stats["requests"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 0}
    assert stats["sent_bytes"] == sent
    assert stats["connections_refused"] == {"total_limit": 0, "per_client_limit": 1}
    assert stats["connections_total"] == 6
    assert server.stats() == stats | {"connections_active": 0, "responses_in_flight": 0}  # final, after stop

    lines = [json.loads(r.getMessage()) for r in records if r.name == "qeltrix_v6.server.access"]
    assert [(x["method"], x["path"], x["status"], x["range"]) for x in lines] == [
        ("GET", "/data.bin", 206, "bytes=0-99"),
        ("GET", "/data.bin", 206, "bytes=500-"),
        ("GET", "/data.bin", 206, "bytes=5-5"),
        ("GET", "/missing.bin", 404, None),
    ]
    assert [x["bytes"] for x in lines[:3]] == [100, len(DATA) - 500, 1]
    assert all(x["client"] == "127.0.0.1" and x["protocol"] == "HTTP/1.1" and x["complete"] for x in lines)
    assert all(x["referer"] is None and x["duration_ms"] >= 0 for x in lines)
    assert lines[0]["user_agent"] == "ua/1"
    assert not [r for r in records if r.levelno >= logging.ERROR]


def h2_stalled_streams(address: tuple[str, int], path: str, streams: int) -> socket.socket:
    """An h2c connection (a real HTTP/2 client stack, hyper-h2) that opens `streams` GETs of
    `path`, waits for each response's headers, then never grants flow-control window (the
    server may send 64 KiB in all on the connection) and stops reading."""
    import h2.config
    import h2.connection
    import h2.events

    s = socket.create_connection(address, timeout=WAIT_S)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    while conn.remote_settings.max_concurrent_streams > 1000:  # until the server's SETTINGS came
        conn.receive_data(s.recv(65536))
        s.sendall(conn.data_to_send())
    assert conn.remote_settings.max_concurrent_streams == 32  # the server's bound per connection
    host = f"{address[0]}:{address[1]}"
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)])
    s.sendall(conn.data_to_send())
    answered = 0
    while answered < streams:
        data = s.recv(65536)
        assert data, "server closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                assert dict(event.headers)[b":status"] == b"200"
                answered += 1
        s.sendall(conn.data_to_send())  # SETTINGS/PING acks only: no WINDOW_UPDATE is sent
    return s


def test_stalled_http2_streams_do_not_block_other_clients(root: Path, tmp_path: Path) -> None:
    """20 HTTP/2 connections x 32 streams that stop reading (640 responses in flight, more
    than tokio's 512 blocking threads) while other clients are served in full, over HTTP/2
    and HTTP/1.1: a stalled stream holds no thread."""
    with qeltrix_v6.SeekServer(root, key=KEY) as server:
        stalled_conns = [h2_stalled_streams(server.address, "/big.bin", 32) for _ in range(20)]
        try:
            assert server.stats()["responses_in_flight"] == 640
            for flags in (["--http2-prior-knowledge"], ["--http1.1"]):
                curl([*flags, f"{server.url}/data.bin"], tmp_path / "full")
                assert (tmp_path / "full").read_bytes() == DATA
        finally:
            for c in stalled_conns:
                c.close()


def h2_status(address: tuple[str, int], headers: list[tuple[str, str]]) -> int:
    """The status of one h2c request with exactly these header fields."""
    import h2.config
    import h2.connection
    import h2.events

    with socket.create_connection(address, timeout=WAIT_S) as s:
        # The client library would refuse to send the malformed requests this test needs.
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=True)
        s.sendall(conn.data_to_send())
        while data := s.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return int(dict(event.headers)[b":status"])
            s.sendall(conn.data_to_send())
    raise AssertionError("no response")


def test_http2_host_is_authority(root: Path) -> None:
    """Over HTTP/2 `:authority` stands for Host (RFC 9113 8.3.1): one of them is required, and
    a Host that differs from `:authority` is refused."""
    base = [(":method", "GET"), (":path", "/data.bin"), (":scheme", "http")]
    with qeltrix_v6.SeekServer(root, key=KEY) as server:
        a = server.address
        assert h2_status(a, [*base, (":authority", "example.com")]) == 200
        assert h2_status(a, [*base, ("host", "example.com")]) == 200
        assert h2_status(a, base) == 400
        assert h2_status(a, [*base, (":authority", "example.com"), ("host", "other.example")]) == 400


def test_silent_connection_is_closed_at_the_header_timeout(root: Path) -> None:
    """Telling HTTP/1.1 from HTTP/2 waits for the first bytes; a client that sends none is
    still closed after the header timeout, not the (longer) idle timeout."""
    with qeltrix_v6.SeekServer(root, key=KEY, header_timeout=0.3, idle_timeout=600) as server:
        s = socket.create_connection(server.address, timeout=WAIT_S)
        try:
            assert s.recv(100) == b""
        finally:
            s.close()


def stalled(address: tuple[str, int], path: str) -> socket.socket:
    """A client that asks for a large body and does not read it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(address)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(WAIT_S)
    assert s.recv(12).startswith(b"HTTP/1.1 200")
    return s


def test_stop_drain_closes_what_is_left(root: Path) -> None:
    """stop(drain=...) waits for responses in flight, then closes a client that does not read."""
    server = qeltrix_v6.SeekServer(root, key=KEY).start()
    s = stalled(server.address, "/big.bin")
    address = server.address
    server.stop(drain=0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT_S)
    # The stalled response was cut: its body ends before its Content-Length.
    got = b""
    while chunk := s.recv(1 << 20):
        got += chunk
    s.close()
    assert 0 < len(got) < len(BIG)
    assert server.stats()["client_aborts"] == 1


@pytest.fixture
def sigterm_server(root: Path) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    with running_cli(
        "serve", "--port", "0", "--key-file", str(root / "key"), "--drain-timeout", "60", str(root),
        ready=r"serving .* on (http://\S+)",
    ) as (proc, m, lines):  # fmt: skip
        yield proc, m.group(1), lines


def test_sigterm_drains_slow_downloads(sigterm_server) -> None:
    """SIGTERM while slow downloads run over HTTP/1.1 and HTTP/2 (GOAWAY): they complete
    byte-exact, a new connection is refused, and the server exits 0 with a clean message."""
    proc, base, lines = sigterm_server
    # Each curl writes to a pipe this test reads: after its first bytes the test stops reading,
    # so curl stops reading its socket and the download stays in flight until the test
    # resumes, after the SIGTERM (curl's --limit-rate lets the first megabytes through at once).
    flags = ["--http1.1", "--http2-prior-knowledge"]
    clients = [
        subprocess.Popen(
            [require("curl"), "-sS", "--fail", flag, "-o", "-", f"{base}/slow.bin"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for flag in flags
    ]
    bodies: list[bytes] = []
    try:
        firsts = [client.stdout.read(64 * 1024) if client.stdout else b"" for client in clients]
        assert all(len(first) == 64 * 1024 for first in firsts)  # both in flight
        proc.send_signal(signal.SIGTERM)
        host, port = base.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + WAIT_S
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection((host, int(port)), timeout=WAIT_S).close()
                time.sleep(0.01)
            except (ConnectionRefusedError, ConnectionResetError):
                # Refused, or reset while it sat in the backlog of the listener being closed.
                refused = True
        assert refused
        for client, first in zip(clients, firsts, strict=True):
            out, err = client.communicate(timeout=WAIT_S)
            assert client.returncode == 0, err
            bodies.append(first + out)
    finally:
        for client in clients:
            client.kill()
            client.wait()
    for body in bodies:
        assert body == SLOW
    assert proc.wait(WAIT_S) == 0
    deadline = time.monotonic() + WAIT_S
    while not any("stopped (signal 15)" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.02)  # the stderr reader thread catches up
    text = "".join(lines)
    assert "stopped (signal 15)" in text
    assert " ERROR: " not in text and "Traceback" not in text and "terminated by signal" not in text
