"""What operators of a gateway pair rely on (issue 12): Prometheus metrics, a graceful drain on
SIGTERM, a key rotation by SIGHUP with connections open, and PostgreSQL through the pair.

Every gateway here is a real `qeltrix gateway` process (or a GatewayServer) on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY, require, running_cli
from prometheus_client.parser import text_string_to_metric_families


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1: each connection gets back what it sends, then a half-close."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=128)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):
            while data := c.recv(1 << 20):
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


def roundtrip(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: s.recv(1 << 20), b""))


def ping(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        more = s.recv(len(data) - len(got))
        assert more, "the connection closed"
        got += more
    return got


def ping_rounds(address: tuple[str, int], n: int, rounds: int, start: threading.Barrier, errors: list[str]) -> None:
    """Connection ``n`` of an interactive crowd: once ``start`` lets every connection go,
    ``rounds`` pings of small messages of varied sizes in lockstep; what goes wrong is appended
    to ``errors`` (this runs on a thread)."""
    try:
        with socket.create_connection(address, timeout=60) as s:
            start.wait(30)
            for i in range(rounds):
                msg = f"{n}:{i}:".encode() + os.urandom(1 + (n * 37 + i * 11) % 300)
                if ping(s, msg) != msg:
                    errors.append(f"connection {n} round {i}: wrong echo")
                    return
    except Exception as e:  # reported by the caller
        errors.append(f"connection {n}: {type(e).__name__}: {e}")


def crowd_pings(
    address: tuple[str, int], conns: int, rounds: int, beside: Callable[[threading.Barrier], None]
) -> list[str]:
    """``conns`` connections of :func:`ping_rounds` and ``beside(start)``, each on a thread,
    let go at once by the barrier ``start`` (``beside`` waits on it too); the crowd's errors."""
    errors: list[str] = []
    start = threading.Barrier(conns + 2)
    threads = [threading.Thread(target=ping_rounds, args=(address, n, rounds, start, errors)) for n in range(conns)]
    threads.append(threading.Thread(target=beside, args=(start,)))
    for t in threads:
        t.start()
    start.wait(30)
    for t in threads:
        t.join(120)
    return errors


def key_file(path: Path, key: bytes) -> str:
    path.write_bytes(key)
    path.chmod(0o600)
    return str(path)


def scrape(addr: tuple[str, int], path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[str, float]:
    """`name{label=value,...}` -> value, through the Prometheus project's own parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_metrics_are_prometheus_text_and_count_what_the_pair_did() -> None:
    with (
        echo_server() as target,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=f"127.0.0.1:{target}", key=KEY) as dec,
        qeltrix_v6.GatewayServer(
            "router", "127.0.0.1:0", target=f"127.0.0.1:{dec.address[1]}", key=KEY, metrics="127.0.0.1:0"
        ) as router,
    ):
        assert router.metrics_address is not None
        for i in range(3):
            assert roundtrip(router.address[1], b"x" * (1000 * (i + 1))) == b"x" * (1000 * (i + 1))
        # A peer that speaks no Qeltrix to the decrypt side: not counted by the router.
        deadline = time.monotonic() + 10
        while router.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.02)
        status, text = scrape(router.metrics_address)
        assert status == 200
        m = samples(text)
        assert m["qeltrix_gateway_connections_total"] == 3
        assert m["qeltrix_gateway_connections_active"] == 0
        assert m["qeltrix_gateway_connections_aborted_total"] == 0
        assert m["qeltrix_gateway_received_bytes_total"] == 6000
        assert m["qeltrix_gateway_sent_bytes_total"] == 6000
        # Each connection: at least one sealed frame up (data, then FINAL) and one opened down.
        assert m["qeltrix_gateway_frames_total"] >= 6
        assert m["qeltrix_gateway_crypto_calls_total"] >= 6
        assert m["qeltrix_gateway_crypto_queue_depth"] == 0
        assert m["qeltrix_gateway_info{mode=router}"] == 1
        assert scrape(router.metrics_address, "/healthz") == (200, "ok\n")
        # A drain: /healthz turns 503 while /metrics keeps answering.
        router._core.stop_accepting()
        assert scrape(router.metrics_address, "/healthz")[0] == 503
        assert scrape(router.metrics_address)[0] == 200


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_thousand_open_connections_hold_no_thread_each() -> None:
    """1,000 connections open at once through a router+decrypt pair (in this process): every
    one answers, and the threads and memory of the pair do not grow with them."""
    n = 1000
    with (
        echo_server() as target,
        qeltrix_v6.GatewayServer(
            "decrypt", "127.0.0.1:0", target=f"127.0.0.1:{target}", key=KEY, max_connections=2 * n
        ) as dec,
        qeltrix_v6.GatewayServer(
            "router", "127.0.0.1:0", target=f"127.0.0.1:{dec.address[1]}", key=KEY, max_connections=2 * n
        ) as router,
    ):
        # Warm up (workers started, buffers pooled), then count.
        assert roundtrip(router.address[1], b"warm") == b"warm"
        threads0, rss0 = _threads(), _rss_bytes()
        socks = []
        try:
            for i in range(n):
                s = socket.create_connection(router.address, timeout=60)
                socks.append(s)
                s.sendall(b"%d;" % i)
            for i, s in enumerate(socks):
                want = b"%d;" % i
                assert _recv_exact(s, len(want)) == want
            deadline = time.monotonic() + 30
            while (router.stats()["active"] < n or dec.stats()["active"] < n) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert router.stats()["active"] == n and dec.stats()["active"] == n
            threads, rss = _threads(), _rss_bytes()
        finally:
            for s in socks:
                s.close()
        # The echo server here holds a thread per connection; the gateways add none (every
        # connection is a task on their workers).
        assert threads - threads0 <= n + 100, (threads0, threads)
        # Well under a block per connection and gateway (2 x 2 x 256 KiB would be 1 GiB).
        assert rss - rss0 < 256 << 20, (rss0, rss)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        assert more, "the connection closed"
        got += more
    return got


# --------------------------------------------------------------------------------------
# No thread per connection, not even while connections are being set up: every connection
# is a task on the gateway's few asynchronous workers from accept to end (handshake, stream
# header, connect to the target, data phase).

# A `qeltrix gateway` process: the interpreter's main thread, a few helpers (accept, metrics,
# signals) and one worker per core, each with a blocking pool of at most 4 threads that only a
# sink's file or object writes use; never a thread per connection.
CORES = len(os.sched_getaffinity(0))
MAX_GATEWAY_THREADS = 8 + CORES
MAX_SINK_THREADS = 8 + 5 * CORES


def _proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


@contextlib.contextmanager
def peak_threads(pids: list[int]) -> Iterator[dict[int, int]]:
    """The most threads each process of ``pids`` had while the block ran (sampled about every
    millisecond)."""
    peak = {p: _proc_threads(p) for p in pids}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in pids:
                with contextlib.suppress(OSError):
                    peak[p] = max(peak[p], _proc_threads(p))
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join(5)


def x25519_identities(tmp: Path) -> dict[str, list[str]]:
    """Pinned X25519 identities for a router+decrypt pair: each side's CLI arguments."""
    pub = {}
    for side in ("router", "decrypt"):
        out = subprocess.run(
            [sys.executable, "-m", "qeltrix_v6", "keygen", "--x25519", "-o", str(tmp / f"{side}.id")],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        pub[side] = out.stdout.strip().splitlines()[-1]
    return {
        s: ["--identity", str(tmp / f"{s}.id"), "--peer", pub[o]]
        for s, o in (("router", "decrypt"), ("decrypt", "router"))
    }


def open_many(port: int, n: int, first: bytes | None) -> list[socket.socket]:
    """``n`` connections to ``port``, opened one right after the other (each sending ``first``
    at once, when given), so their setups overlap in the gateway."""
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            socks.append(s)
            if first is not None:
                s.sendall(first % i if b"%d" in first else first)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


@pytest.mark.parametrize("pinned", [False, True], ids=["shared-key", "pinned"])
def test_a_thousand_connections_set_up_at_once_never_hold_a_thread_each(tmp_path: Path, pinned: bool) -> None:
    """1,000 connections opened back to back through a router+decrypt pair of `qeltrix
    gateway` processes, their session handshakes (shared-key, or X25519 with pinned peers)
    in flight together: every one answers, and neither process ever has more than a few
    threads, at the peak of the setups included."""
    n = 1000
    cred = (
        x25519_identities(tmp_path)
        if pinned
        else {s: ["-k", key_file(tmp_path / "k.key", KEY)] for s in ("router", "decrypt")}
    )
    common = ["--listen", "127.0.0.1:0", "--max-connections", str(2 * n), "--quiet"]
    with echo_server() as target, running_cli(
        "gateway", "--mode", "decrypt", "--target", f"127.0.0.1:{target}", *common, *cred["decrypt"], ready=READY
    ) as (dec, dm, _), running_cli(
        "gateway", "--mode", "router", "--target", f"127.0.0.1:{dm.group(1)}", *common, *cred["router"], ready=READY
    ) as (router, rm, _):  # fmt: skip
        with peak_threads([router.pid, dec.pid]) as peak:
            socks = open_many(int(rm.group(1)), n, b"%d;")
            try:
                for i, s in enumerate(socks):
                    want = b"%d;" % i
                    assert _recv_exact(s, len(want)) == want
            finally:
                for s in socks:
                    s.close()
        assert max(peak.values()) <= MAX_GATEWAY_THREADS, peak


def test_a_thousand_reflect_connections_never_hold_a_thread_each(tmp_path: Path) -> None:
    """Reflect mode runs on the workers too: 1,000 connections at once each get their stream
    (its header and a frame of what they sent) with the gateway's threads bounded."""
    n = 1000
    kf = key_file(tmp_path / "k.key", KEY)
    with running_cli(
        "gateway", "--mode", "reflect", "--listen", "127.0.0.1:0", "-k", kf, "--max-connections", str(2 * n),
        "--quiet", ready=READY,
    ) as (gw, m, _):  # fmt: skip
        with peak_threads([gw.pid]) as peak:
            socks = open_many(int(m.group(1)), n, b"reflect me")
            try:
                for s in socks:
                    s.shutdown(socket.SHUT_WR)
                for s in socks:
                    stream = b"".join(iter(lambda s=s: s.recv(1 << 16), b""))
                    assert stream.startswith(b"QLTXV6\r\n") and len(stream) > 4096, len(stream)
            finally:
                for s in socks:
                    s.close()
        assert peak[gw.pid] <= MAX_GATEWAY_THREADS, peak


def test_a_sink_stores_500_streams_at_once_with_its_threads_bounded(tmp_path: Path) -> None:
    """500 streams at once through a router into a sink directory: the sink's file writes run
    on its workers' small blocking pools, so it never has more than a few threads; every
    stream is stored whole and acknowledged."""
    n = 500
    kf = key_file(tmp_path / "k.key", KEY)
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    common = ["--listen", "127.0.0.1:0", "-k", kf, "--max-connections", str(2 * n), "--quiet"]
    with running_cli(
        "gateway", "--mode", "sink", "--sink-dir", str(sink_dir), *common, ready=READY
    ) as (sink, sm, _), running_cli(
        "gateway", "--mode", "router", "--target", f"127.0.0.1:{sm.group(1)}", *common, ready=READY
    ) as (router, rm, _):  # fmt: skip
        with peak_threads([sink.pid, router.pid]) as peak:
            socks = open_many(int(rm.group(1)), n, b"stream %d;" + bytes(20000))
            try:
                for s in socks:
                    s.shutdown(socket.SHUT_WR)
                for s in socks:
                    assert s.recv(1) == b"", "the sink acknowledges with an empty reply"
            finally:
                for s in socks:
                    s.close()
        assert max(peak.values()) <= MAX_SINK_THREADS, peak
    stored = sorted(sink_dir.glob("stream-*.qltx"))
    assert len(stored) == n and not list(sink_dir.glob(".*.part"))
    got = set()
    for f in stored[:: n // 10]:
        out = io.BytesIO()
        qeltrix_v6.unpack(f, out, key=KEY)
        got.add(out.getvalue())
    assert all(re.fullmatch(rb"stream \d+;\0{20000}", x) for x in got) and len(got) == 10


def test_idle_unauthenticated_connections_time_out_without_a_thread_each(tmp_path: Path) -> None:
    """500 connections to a decrypt gateway that never send a byte: none holds a thread while it
    waits, and each is reset at the handshake timeout, counted as a handshake failure."""
    n = 500
    kf = key_file(tmp_path / "k.key", KEY)
    with echo_server() as target, running_cli(
        "gateway", "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{target}", "-k", kf,
        "--handshake-timeout", "1", "--max-connections", str(2 * n), ready=READY,
    ) as (dec, m, lines):  # fmt: skip
        with peak_threads([dec.pid]) as peak:
            socks = open_many(int(m.group(1)), n, None)
            try:
                started = time.monotonic()
                for s in socks:
                    with pytest.raises(ConnectionResetError):
                        s.recv(1)
                took = time.monotonic() - started
            finally:
                for s in socks:
                    s.close()
        assert peak[dec.pid] <= MAX_GATEWAY_THREADS, peak
        assert took < 30, took
        deadline = time.monotonic() + 10
        while sum("within the handshake timeout" in x for x in lines) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum("within the handshake timeout" in x for x in lines) == n, "".join(lines[-5:])


def test_handshake_failures_and_aborts_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with (
        echo_server() as target,
        qeltrix_v6.GatewayServer(
            "decrypt", "127.0.0.1:0", target=f"127.0.0.1:{target}", key=KEY, metrics="127.0.0.1:0"
        ) as dec,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=f"127.0.0.1:{dec.address[1]}", key=bytes(32)) as wrong,
    ):
        with contextlib.suppress(OSError):
            roundtrip(wrong.address[1], b"hello")
        assert dec.metrics_address is not None
        deadline = time.monotonic() + 10
        while dec.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.02)
        m = samples(scrape(dec.metrics_address)[1])
        assert m["qeltrix_gateway_handshake_failures_total"] == 1
        assert m["qeltrix_gateway_connections_aborted_total"] == 1
    lines = [r.getMessage() for r in caplog.records if "aborted" in r.getMessage()]
    assert any(
        re.search(r"connection \d+ from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+ \(decrypt\): aborted", x) for x in lines
    ), lines


def cli_pair(tmp: Path, target: int, *extra: str) -> tuple[list[str], list[str]]:
    kf = key_file(tmp / "shared.key", KEY)
    dec = ["gateway", "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{target}", "-k", kf]
    return dec, ["-k", kf, *extra]


READY = r"gateway listening on 127\.0\.0\.1:(\d+)"


def test_sigterm_drains_an_in_flight_200_mib_transfer_then_exits_0(tmp_path: Path) -> None:
    size = 200 << 20
    chunk = os.urandom(1 << 20)
    with echo_server() as target:
        dec_args, common = cli_pair(tmp_path, target)
        with running_cli(*dec_args, ready=READY) as (_dec, dm, _), running_cli(
            "gateway", "--mode", "router", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{dm.group(1)}",
            *common, "--drain-timeout", "60", ready=READY,
        ) as (router, rm, rlines):  # fmt: skip
            received = 0

            def reader(s: socket.socket) -> None:
                nonlocal received
                while data := s.recv(1 << 20):
                    received += len(data)

            with socket.create_connection(("127.0.0.1", int(rm.group(1))), timeout=60) as s:
                t = threading.Thread(target=reader, args=(s,), daemon=True)
                t.start()
                for i in range(size >> 20):
                    s.sendall(chunk)
                    if i == 20:
                        router.send_signal(signal.SIGTERM)
                        # New connections are refused once the drain has started.
                        deadline = time.monotonic() + 10
                        while time.monotonic() < deadline:
                            try:
                                socket.create_connection(("127.0.0.1", int(rm.group(1))), timeout=1).close()
                            except OSError:
                                break
                            time.sleep(0.05)
                        else:
                            pytest.fail("the router still accepts connections while draining")
                s.shutdown(socket.SHUT_WR)
                t.join(120)
            assert received == size
            assert router.wait(30) == 0, "".join(rlines)
            assert any("draining" in line for line in rlines), "".join(rlines)
            assert any(re.search(r"\(router\): clean; 209715200 B in, 209715200 B out", x) for x in rlines), "".join(
                rlines
            )


def test_sighup_rotates_the_shared_key_without_dropping_open_connections(tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    current, previous = tmp_path / "current.key", tmp_path / "previous.key"
    key_file(current, k1)
    key_file(previous, os.urandom(32))
    router_key = tmp_path / "router.key"
    key_file(router_key, k1)

    def wait_for(lines: list[str], what: str, count: int) -> None:
        deadline = time.monotonic() + 15
        while sum(what in x for x in lines) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(what in x for x in lines) >= count, "".join(lines)

    with echo_server() as target, running_cli(
        "gateway", "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{target}",
        "-k", str(current), "-k", str(previous), ready=READY,
    ) as (dec, dm, dlines):  # fmt: skip
        dport = int(dm.group(1))
        with running_cli(
            "gateway", "--mode", "router", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{dport}",
            "-k", str(router_key), ready=READY,
        ) as (router, rm, rlines):  # fmt: skip
            rport = int(rm.group(1))
            with socket.create_connection(("127.0.0.1", rport), timeout=30) as held:
                assert ping(held, b"before") == b"before"
                # Step 1: the decrypt side takes the new key and keeps accepting the old one.
                key_file(previous, k1)
                key_file(current, k2)
                dec.send_signal(signal.SIGHUP)
                wait_for(dlines, "SIGHUP: reloaded", 1)
                assert roundtrip(rport, b"old key still accepted") == b"old key still accepted"
                # Step 2: the router moves to the new key.
                key_file(router_key, k2)
                router.send_signal(signal.SIGHUP)
                wait_for(rlines, "SIGHUP: reloaded", 1)
                assert roundtrip(rport, b"new key") == b"new key"
                # Step 3: the old key is retired; a peer still using it is refused.
                key_file(previous, os.urandom(32))
                dec.send_signal(signal.SIGHUP)
                wait_for(dlines, "SIGHUP: reloaded", 2)
                with qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=f"127.0.0.1:{dport}", key=k1) as old:
                    try:
                        got = roundtrip(old.address[1], b"retired key")
                    except OSError:  # reset: the refusal a client sees
                        got = b""
                    assert got == b"", got
                # The connection opened before any of this still works.
                assert ping(held, b"after") == b"after"
            assert router.poll() is None and dec.poll() is None


def test_a_key_file_readable_by_others_is_warned_about_even_with_quiet(tmp_path: Path) -> None:
    kf = tmp_path / "loose.key"
    kf.write_bytes(KEY)
    kf.chmod(0o644)
    with running_cli(
        "gateway", "--mode", "reflect", "--listen", "127.0.0.1:0", "-k", str(kf), "--quiet", ready=READY
    ) as (_p, _m, lines):  # fmt: skip
        assert any("readable by others (mode 0644)" in x for x in lines), "".join(lines)


# --------------------------------------------------------------------------------------
# PostgreSQL through the pair


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / tool).exists():
            return str(d / tool)
    return require(tool)


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[int]:
    """A PostgreSQL server of its own on 127.0.0.1 (as `nobody` when run as root)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    run_as: list[str] = []
    if os.geteuid() == 0:
        # Root cannot run PostgreSQL; pytest's tmp_path is private to root, so the cluster
        # lives in a directory of its own that `nobody` owns.
        nobody = pwd.getpwnam("nobody")
        data = Path(tempfile.mkdtemp(prefix="qeltrix-pg-"))
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
        run_as = [require("runuser"), "-u", "nobody", "--"]
    else:
        data = tmp / "pgdata"
        data.mkdir()
    data.chmod(0o700)
    r = subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=50"
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "log"), "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=90, cwd="/",
    )  # fmt: skip
    try:
        yield port
    finally:
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60, cwd="/"
        )
        shutil.rmtree(data, ignore_errors=True)


def test_pgbench_builtin_scripts_through_the_pair_with_zero_failed_transactions(tmp_path: Path) -> None:
    pgbench = _pg_bin("pgbench")
    with (
        postgres(tmp_path) as pg,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=f"127.0.0.1:{pg}", key=KEY) as dec,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=f"127.0.0.1:{dec.address[1]}", key=KEY) as rt,
    ):
        conn = ["-h", "127.0.0.1", "-p", str(rt.address[1]), "-U", "postgres"]
        init = subprocess.run(
            [pgbench, "-i", "-s", "1", "-q", *conn, "postgres"], capture_output=True, text=True, timeout=120
        )
        assert init.returncode == 0, init.stderr
        for script in ("tpcb-like", "select-only", "simple-update"):
            r = subprocess.run(
                [pgbench, "-b", script, "-c", "4", "-j", "2", "-t", "150", "-n", *conn, "postgres"],
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            assert "number of transactions actually processed: 600/600" in r.stdout, r.stdout
            failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
            assert failed is None or failed.group(1) == "0", r.stdout
        assert rt.stats()["failed"] == 0
