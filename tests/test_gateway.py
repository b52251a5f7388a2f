"""GatewayServer over real sockets on 127.0.0.1: every mode, chaining, sinks and recovery,
an unmodified Redis through a router/decrypt pair, concurrency, backpressure, tampering
in transit and a peer with the wrong key. Every payload is compared byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import require

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


@contextlib.contextmanager
def tcp_server(handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """A real threaded TCP server running `handler` per connection."""
    srv = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    stop = threading.Event()

    def run() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=lambda c=c: _guard(handler, c), daemon=True).start()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[:2]
    finally:
        stop.set()
        t.join(2)
        srv.close()


def _guard(handler: Callable[[socket.socket], None], c: socket.socket) -> None:
    with c, contextlib.suppress(OSError):
        handler(c)


def echo(c: socket.socket) -> None:
    while data := c.recv(1 << 16):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)


def digest(c: socket.socket) -> None:
    """Reply with the SHA-256 and length of everything received."""
    h, n = hashlib.sha256(), 0
    while data := c.recv(1 << 20):
        h.update(data)
        n += len(data)
    c.sendall(h.digest() + n.to_bytes(8, "little"))
    c.shutdown(socket.SHUT_WR)


def exchange(addr: tuple[str, int], data: bytes, timeout: float = 60) -> bytes:
    """Send `data` (then half-close) while reading the reply concurrently."""
    with socket.create_connection(addr, timeout=timeout) as s:
        got = bytearray()

        def reader() -> None:
            # A refused or cut connection is reset: what arrived before is the reply.
            with contextlib.suppress(OSError):
                while chunk := s.recv(1 << 20):
                    got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        t.join(timeout)
        assert not t.is_alive(), "the reply never ended"
    return bytes(got)


def closed_errors(gw: qeltrix_v6.GatewayServer, timeout: float = 10) -> list[str | None]:
    """The errors of `gw`'s connections once they have all closed (stats are final then)."""
    deadline = time.monotonic() + timeout
    while True:
        conns = gw.stats()["per_connection"]
        if (conns and not any(c["open"] for c in conns)) or time.monotonic() > deadline:
            return [c["error"] for c in conns]
        time.sleep(0.02)


@contextlib.contextmanager
def pair(target: tuple[str, int], key: bytes = K1, **kw) -> Iterator[tuple[qeltrix_v6.GatewayServer, ...]]:
    """A router -> decrypt pair in front of `target`."""
    with (
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=key, **kw) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, key=key, **kw) as r,
    ):
        yield r, d


def test_router_decrypt_echo_round_trip_50_mib() -> None:
    data = os.urandom(50 << 20)
    with tcp_server(echo) as target, pair(target) as (r, _d):
        assert exchange(r.address, data) == data
        stats = r.stats()
    assert stats["connections"] == 1
    conn = stats["per_connection"][0]
    assert conn["bytes_in"] == conn["bytes_out"] == len(data)
    assert conn["blocks"] >= 2 * len(data) // (256 << 10)
    assert conn["error"] is None


def test_interactive_small_messages_flow_without_waiting_for_a_full_block() -> None:
    with tcp_server(echo) as target, pair(target) as (r, _), socket.create_connection(r.address, timeout=10) as s:
        for i in range(50):
            msg = b"ping %d\n" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(100)
            assert got == msg


def test_network_between_sees_only_ciphertext() -> None:
    seen = bytearray()

    def tap(c: socket.socket, to: tuple[str, int]) -> None:
        with socket.create_connection(to) as up:

            def back() -> None:
                with contextlib.suppress(OSError):
                    while data := up.recv(1 << 16):
                        c.sendall(data)
                    c.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=back)
            t.start()
            while data := c.recv(1 << 16):
                seen.extend(data)
                up.sendall(data)
            up.shutdown(socket.SHUT_WR)
            t.join(10)

    secret = b"the launch code is 0000 " * 1000
    with (
        tcp_server(echo) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=K1) as d,
        tcp_server(lambda c: tap(c, d.address)) as middle,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=middle, key=K1) as r,
    ):
        assert exchange(r.address, secret) == secret
    # The shared-key session opening (FORMAT.md 12.2: magic, nonce, key check), then a stream.
    assert seen.startswith(b"QLTXSK1\n") and seen[72:80] == b"QLTXV6\r\n"
    assert b"launch code" not in seen


def test_reflect_returns_a_stream_that_recovers_to_the_input(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    with qeltrix_v6.GatewayServer("reflect", "127.0.0.1:0", key=K1) as gw:
        stream = exchange(gw.address, data)
    assert data[:4096] not in stream
    (tmp_path / "s.part").write_bytes(stream)
    info = qeltrix_v6.recover(tmp_path / "s.part", tmp_path / "s.qltx", key=K1)
    assert info["complete"] and info["pt_len"] == len(data)
    out = io.BytesIO()
    qeltrix_v6.unpack(tmp_path / "s.qltx", out, key=K1)
    assert out.getvalue() == data


def test_chain_of_two_routers_and_two_decrypt_gateways() -> None:
    data = os.urandom(5 << 20)
    with (
        tcp_server(echo) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=K1) as d1,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=d1.address, key=K2) as d2,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d2.address, key=K2) as r2,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=r2.address, key=K1) as r1,
    ):
        assert exchange(r1.address, data) == data
        # The outer hop carries the inner hop's V6 stream as its payload: two layers.
        assert r2.stats()["per_connection"][0]["bytes_in"] > len(data)


def test_sink_then_unpack_and_seekserver_range(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    with (
        qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", key=K1, sink_dir=tmp_path) as sink,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=sink.address, key=K1) as r,
    ):
        assert exchange(r.address, data) == b""  # the sink acknowledges with an empty reply
        assert r.stats()["per_connection"][0]["error"] is None
    stored = sorted(tmp_path.glob("stream-*.qltx"))
    assert len(stored) == 1
    assert not list(tmp_path.glob(".*.part"))
    out = io.BytesIO()
    qeltrix_v6.unpack(stored[0], out, key=K1)
    assert out.getvalue() == data
    with qeltrix_v6.SeekServer(tmp_path, key=K1) as server:
        name = stored[0].name.removesuffix(".qltx")
        req = urllib.request.Request(f"{server.url}/{name}", headers={"Range": "bytes=1000000-1000099"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 206
            assert resp.read() == data[1000000:1000100]


def test_raw_sink_stores_plaintext_as_a_container(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    with qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", key=K1, sink_dir=tmp_path, sink_raw=True) as sink:
        exchange(sink.address, data)
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("stream-*.qltx")) and time.monotonic() < deadline:
            time.sleep(0.05)
    (stored,) = tmp_path.glob("stream-*.qltx")
    assert data[:1000] not in stored.read_bytes()
    assert qeltrix_v6.seek_extract(stored, 12345, 100, key=K1) == data[12345:12445]


def reflect_stream(data: bytes) -> bytes:
    with qeltrix_v6.GatewayServer("reflect", "127.0.0.1:0", key=K1, block_size=64 << 10) as gw:
        return exchange(gw.address, data)


def test_cut_connection_leaves_an_incomplete_but_readable_container(tmp_path: Path) -> None:
    # A stream can only reach a sink through a session (FORMAT.md 12.2), so the cut is made
    # where a user makes it: the router's client resets, the router sends no FINAL frame.
    data = os.urandom(1 << 20)
    with (
        qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", key=K1, sink_dir=tmp_path, block_size=64 << 10) as sink,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=sink.address, key=K1, block_size=64 << 10) as r,
    ):
        s = socket.create_connection(r.address)
        s.sendall(data)
        deadline = time.monotonic() + 10
        while r.stats()["blocks"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST: a cut, not a clean end
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("stream-*.qltx")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert closed_errors(sink)[0] is not None  # the cut is recorded as a failure
    (stored,) = tmp_path.glob("stream-*.qltx")
    with pytest.raises(qeltrix_v6.TruncatedError):  # a cut is never a clean end...
        qeltrix_v6.open(stored, key=K1).read()
    warns = pytest.warns(qeltrix_v6.IncompleteContainerWarning)
    with qeltrix_v6.open(stored, key=K1, allow_incomplete=True) as f, warns:
        got = f.read()  # ...unless the reader opts in
    assert 0 < len(got) <= len(data)
    assert got == data[: len(got)]


def test_recover_rebuilds_the_index_of_a_stream_cut_mid_frame(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    stream = reflect_stream(data)
    (tmp_path / "cut.part").write_bytes(stream[: len(stream) * 3 // 4])
    info = qeltrix_v6.recover(tmp_path / "cut.part", tmp_path / "cut.qltx", key=K1)
    assert not info["complete"] and info["stopped"]
    out = io.BytesIO()
    with pytest.warns(qeltrix_v6.IncompleteContainerWarning):
        qeltrix_v6.unpack(tmp_path / "cut.qltx", out, key=K1, allow_incomplete=True)
    assert out.getvalue() == data[: info["pt_len"]]
    assert info["pt_len"] >= len(data) // 2
    with pytest.raises(qeltrix_v6.WrongKeyError):
        qeltrix_v6.recover(tmp_path / "cut.part", tmp_path / "other.qltx", key=K2)
    assert not (tmp_path / "other.qltx").exists()


def test_fifty_concurrent_connections_of_20_mib() -> None:
    payloads = [os.urandom(1 << 20) * 20 for _ in range(4)]
    results: list[bytes | None] = [None] * 50
    with tcp_server(digest) as target, pair(target) as (r, _):

        def one(i: int) -> None:
            results[i] = exchange(r.address, payloads[i % 4], timeout=120)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        stats = r.stats()
    for i, got in enumerate(results):
        p = payloads[i % 4]
        assert got == hashlib.sha256(p).digest() + len(p).to_bytes(8, "little"), i
    assert stats["connections"] == 50 and stats["failed"] == 0


def test_slow_receiver_applies_backpressure() -> None:
    release = threading.Event()
    received = hashlib.sha256()
    count = [0]

    def slow(c: socket.socket) -> None:
        release.wait(20)
        while data := c.recv(1 << 20):
            received.update(data)
            count[0] += len(data)

    total = 256 << 20
    chunk = os.urandom(1 << 20)
    sent = [0]
    with tcp_server(slow) as target, pair(target) as (r, _):
        s = socket.create_connection(r.address)

        def sender() -> None:
            with contextlib.suppress(OSError):
                for _ in range(total // len(chunk)):
                    s.sendall(chunk)
                    sent[0] += len(chunk)
                s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=sender)
        t.start()
        # Wait until the sender is blocked: `sent` stops growing (20 polls in a row), which
        # happens once socket buffers and the gateways' blocks are full.
        last, still, deadline = -1, 0, time.monotonic() + 30
        while still < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
            still = still + 1 if sent[0] == last else 0
            last = sent[0]
        assert still == 20, "the sender never blocked: no backpressure"
        # With the receiver stalled, the pipeline holds only socket buffers and a few blocks.
        assert sent[0] < 64 << 20, f"{sent[0]} bytes accepted while the receiver was stalled"
        release.set()
        t.join(120)
        deadline = time.monotonic() + 60
        while count[0] < total and time.monotonic() < deadline:
            time.sleep(0.05)
        s.close()
    expect = hashlib.sha256()
    for _ in range(total // len(chunk)):
        expect.update(chunk)
    assert count[0] == total and received.digest() == expect.digest()


def test_frame_tampered_in_transit_closes_without_delivering_it() -> None:
    got = bytearray()
    done = threading.Event()

    reset = threading.Event()

    def sink_target(c: socket.socket) -> None:
        try:
            while data := c.recv(1 << 16):
                got.extend(data)
        except ConnectionResetError:
            reset.set()  # aborted: a tampered stream is never a clean end
        finally:
            done.set()

    def flipper(c: socket.socket, to: tuple[str, int]) -> None:
        # Forward the router's stream but flip one bit deep inside it (in a later frame); relay
        # the replies (the session opening needs the decrypt gateway's nonce).
        seen = 0
        with socket.create_connection(to) as up:

            def back() -> None:
                with contextlib.suppress(OSError):
                    while data := up.recv(1 << 16):
                        c.sendall(data)

            t = threading.Thread(target=back)
            t.start()
            with contextlib.suppress(OSError):
                while data := c.recv(1 << 16):
                    buf = bytearray(data)
                    pos = 700_000 - seen
                    if 0 <= pos < len(buf):
                        buf[pos] ^= 0x10
                    seen += len(buf)
                    up.sendall(buf)
                # Half-close and wait for the replies to end: closing with unread data would
                # reset the connection and race the decrypt gateway's own detection.
                up.shutdown(socket.SHUT_WR)
            t.join(20)

    data = os.urandom(2 << 20)
    with (
        tcp_server(sink_target) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=K1, block_size=64 << 10) as d,
        tcp_server(lambda c: flipper(c, d.address)) as middle,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=middle, key=K1, block_size=64 << 10) as r,
    ):
        with contextlib.suppress(OSError):
            exchange(r.address, data, timeout=20)
        assert done.wait(20)
        errors = closed_errors(d)
    assert reset.is_set()
    assert len(got) < 700_000
    assert bytes(got) == data[: len(got)]
    assert any(e and "authentication" in e for e in errors), errors


def test_peer_with_another_key_is_refused_before_any_byte_flows() -> None:
    connections = []

    def target_handler(c: socket.socket) -> None:
        connections.append(c.recv(100))

    with (
        tcp_server(target_handler) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=K1) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, key=K2) as r,
    ):
        with contextlib.suppress(OSError):
            assert exchange(r.address, b"hello", timeout=10) == b""
        errors = closed_errors(d)
    assert connections == []
    assert any(e and "wrong key" in e for e in errors), errors


def test_connection_limit_and_idle_timeout() -> None:
    with (
        tcp_server(echo) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=K1, idle_timeout=0.5) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, key=K1, max_connections=2) as r,
    ):
        a = socket.create_connection(r.address)
        b = socket.create_connection(r.address)
        deadline = time.monotonic() + 10
        while r.stats()["active"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        c = socket.create_connection(r.address, timeout=5)
        assert c.recv(10) == b""  # refused: closed at once
        assert r.stats()["refused"] == 1
        # a and b go idle: the decrypt side's idle timeout closes them.
        a.settimeout(10)
        with pytest.raises(ConnectionResetError):  # a stream without FINAL is reset, not ended
            a.recv(10)
        for s in (a, b, c):
            s.close()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    data = os.urandom(100_000)
    with (
        tcp_server(echo, host="::1") as target,
        qeltrix_v6.GatewayServer("decrypt", "[::1]:0", target=f"[::1]:{target[1]}", key=K1) as d,
        qeltrix_v6.GatewayServer("router", "[::1]:0", target=f"[::1]:{d.address[1]}", key=K1) as r,
    ):
        assert exchange(r.address, data) == data


def test_redis_benchmark_through_a_router_decrypt_pair(tmp_path: Path) -> None:
    redis_server, redis_benchmark, redis_cli = require("redis-server"), require("redis-benchmark"), require("redis-cli")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        with pair(("127.0.0.1", port)) as (r, _):
            host, rport = r.address
            cli = [redis_cli, "-h", host, "-p", str(rport)]
            assert subprocess.run([*cli, "SET", "greeting", "hello world"], capture_output=True, text=True,
                                  timeout=10).stdout.strip() == "OK"  # fmt: skip
            out = subprocess.run([*cli, "GET", "greeting"], capture_output=True, text=True, timeout=10)
            assert out.stdout.strip() == "hello world"
            bench = subprocess.run(
                [redis_benchmark, "-h", host, "-p", str(rport), "-t", "set,get,incr,lpush,lrange_100", "-n", "2000",
                 "-c", "10", "-q", "--csv"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert bench.returncode == 0, bench.stderr
            rows = [line for line in bench.stdout.splitlines() if line and not line.startswith('"test"')]
            assert len(rows) >= 5, bench.stdout
            for row in rows:
                assert float(row.split(",")[1].strip('"')) > 0, row
            # The benchmark's writes really reached the server, through the pair.
            out = subprocess.run([*cli, "GET", "counter:__rand_int__"], capture_output=True, text=True, timeout=10)
            assert out.stdout.strip().isdigit() and int(out.stdout.strip()) > 0
            assert r.stats()["failed"] == 0
    finally:
        proc.terminate()
        proc.wait(10)


def identities(n: int) -> list[tuple[bytes, str]]:
    return [qeltrix_v6.gateway.generate_identity() for _ in range(n)]


def test_pinned_handshake_pair_round_trip() -> None:
    (a_priv, a_pub), (b_priv, b_pub) = identities(2)
    data = os.urandom(3 << 20)
    with (
        tcp_server(echo) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, identity=b_priv, peers=[a_pub]) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, identity=a_priv, peers=[b_pub]) as r,
    ):
        assert exchange(r.address, data) == data
        assert d.stats()["failed"] == 0


def test_unpinned_peer_is_refused_before_any_application_byte() -> None:
    (_a_priv, a_pub), (b_priv, b_pub), (c_priv, _c_pub) = identities(3)
    reached = []
    with (
        tcp_server(lambda c: reached.append(c.recv(10))) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, identity=b_priv, peers=[a_pub]) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, identity=c_priv, peers=[b_pub]) as r,
    ):
        with contextlib.suppress(OSError):
            assert exchange(r.address, b"secret request", timeout=10) == b""
        errors = closed_errors(d)
    assert reached == []
    assert any(e and "not pinned" in e for e in errors), errors


def test_router_refuses_a_responder_it_did_not_pin() -> None:
    (a_priv, a_pub), (b_priv, _b_pub), (_c_priv, c_pub) = identities(3)
    with (
        tcp_server(echo) as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, identity=b_priv, peers=[a_pub]) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, identity=a_priv, peers=[c_pub]) as r,
    ):
        with contextlib.suppress(OSError):
            assert exchange(r.address, b"hello", timeout=10) == b""
        errors = closed_errors(r)
    assert any(e and "not pinned" in e for e in errors), errors


def test_pinned_sink_rewraps_the_stream_key_for_storage(tmp_path: Path) -> None:
    (a_priv, a_pub), (b_priv, b_pub) = identities(2)
    data = os.urandom(300_000)
    with (
        qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", identity=b_priv, peers=[a_pub], key=K2, sink_dir=tmp_path) as s,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=s.address, identity=a_priv, peers=[b_pub]) as r,
    ):
        assert exchange(r.address, data) == b""
    (stored,) = tmp_path.glob("stream-*.qltx")
    assert qeltrix_v6.seek_extract(stored, 0, len(data), key=K2) == data


def test_public_key_text_has_a_prefix_and_checksum() -> None:
    _, pub = qeltrix_v6.gateway.generate_identity()
    raw = qeltrix_v6.gateway.decode_public_key(pub)
    assert qeltrix_v6.gateway.encode_public_key(raw) == pub
    damaged = pub[:-3] + ("A" if pub[-3] != "A" else "B") + pub[-2:]
    with pytest.raises(ValueError, match=r"damaged|base64"):
        qeltrix_v6.gateway.decode_public_key(damaged)
    with pytest.raises(ValueError, match="starts with"):
        qeltrix_v6.gateway.decode_public_key("age1" + pub[12:])
