#!/usr/bin/env python3
"""GatewayServer benchmark: a qeltrix router+decrypt pair next to an stunnel TLS 1.3 pair
(AES-256-GCM), an spiped pair and a plain socat relay (the limit), each in front of the same
target server, on loopback, in one run. Issue 5, "Performance".

    python benches/bench_gateway.py               # 1 GiB stream, 10,000 ping-pongs, 50 x 20 MiB
    python benches/bench_gateway.py --quick       # 256 MiB, 2,000 ping-pongs, 50 x 4 MiB
    python benches/bench_gateway.py --relays qeltrix,stunnel --json out.json
    python benches/bench_gateway.py --profile prof/   # perf + py-spy of both qeltrix gateways
    python benches/bench_gateway.py --apps --quick    # redis-benchmark, pgbench, RSS/threads (issue 12)
    python benches/bench_gateway.py --tools --quick   # iperf3 and curl of 256 MiB from nginx (issue 12)

What is measured, for each relay (and for a direct connection, as a reference):

- single stream: one connection sends N bytes to a sink, which answers with the byte count
  and CRC-32 it received: time from connect to that answer (so every byte was delivered);
- round trip: 1-byte ping-pongs with an echo server over one connection, p50/p99;
- aggregate: 50 connections at once, each sending M bytes to the sink; total bytes over the
  time from the first connect to the last answer.

Run it with a RELEASE build of qeltrix_v6 (benches/SERVERS.md). Needs ``stunnel4``,
``spiped``, ``socat`` and ``openssl`` (Debian packages; ``scripts/install-bench-deps.sh``
installs what the benches need beyond the test suite; ``--tools`` also needs iperf3, nginx
and curl). Each qeltrix gateway runs in its own process, like each stunnel and spiped.
Everything listens on 127.0.0.1 only; loops are bounded; every process started here is
stopped at the end or at the ``--max-seconds`` deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _srvutil import (
    KEY,
    LOOPBACK,
    Deadline,
    Procs,
    Profiler,
    child_lifetime_guard,
    cpu_seconds,
    first_line,
    fmt_size,
    fnum,
    free_port,
    git_commit,
    log,
    parse_size,
    percentile,
    print_table,
    ratio,
    run_in_workdir,
    run_text,
    wait_port,
    wait_quiet,
)

RELAYS = ("direct", "socat", "stunnel", "spiped", "qeltrix")
TARGET_TPUT_OVER_STUNNEL = 2.0  # issue 5: single-stream and aggregate throughput
PATTERN_LEN = 1 << 20
CHUNK = 1 << 20
REPLY = struct.Struct("<QI")  # bytes received, CRC-32
OP_TIMEOUT = 300.0  # one connection's socket timeout: a stalled relay fails instead of hanging


# --------------------------------------------------------------------------------------
# child processes: the target server and a qeltrix gateway


def child_target(lifetime: float) -> None:
    """'S' + u64 length: read that many bytes, answer (length, crc32). 'E': echo until EOF."""
    srv = socket.create_server((LOOPBACK, 0), backlog=1024)
    print(f"PORT {srv.getsockname()[1]}", flush=True)

    def serve(c: socket.socket) -> None:
        with c:
            c.settimeout(OP_TIMEOUT)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                mode = c.recv(1)
                if mode == b"E":
                    while data := c.recv(65536):
                        c.sendall(data)
                elif mode == b"S":
                    head = b""
                    while len(head) < 8:
                        more = c.recv(8 - len(head))
                        if not more:
                            return
                        head += more
                    (want,) = struct.unpack("<Q", head)
                    buf = bytearray(CHUNK)
                    view = memoryview(buf)
                    got, crc = 0, 0
                    while got < want:
                        n = c.recv_into(view, min(CHUNK, want - got))
                        if not n:
                            break
                        crc = zlib.crc32(view[:n], crc)
                        got += n
                    c.sendall(REPLY.pack(got, crc))
                    # Wait for the client to close first (no TIME_WAIT pile-up on this side).
                    c.recv(1)
            except OSError:
                pass

    def accept_loop() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    child_lifetime_guard(lifetime, srv.close)


def child_gateway(
    mode: str, target: str, block_size: int, flush_delay: float, stats_file: str, lifetime: float
) -> None:
    import qeltrix_v6

    gw = qeltrix_v6.GatewayServer(
        mode,
        f"{LOOPBACK}:0",
        target=target,
        key=KEY,
        block_size=block_size,
        flush_delay=flush_delay,
        max_connections=4096,
    )
    gw.start()
    print(f"PORT {gw.address[1]} PID {os.getpid()}", flush=True)

    def stop() -> None:
        with contextlib.suppress(Exception):
            st = gw.stats()
            per = st.pop("per_connection", [])
            st["connections_listed"] = len(per)
            st["errors"] = [c.get("error") for c in per if c.get("error")][:10]
            Path(stats_file).write_text(json.dumps(st, default=str))
        gw.stop()

    child_lifetime_guard(lifetime, stop)


def start_py_child(procs: Procs, name: str, argv: list[str]) -> tuple[int, int]:
    p = procs.start(name, [sys.executable, __file__, *argv], stdin_pipe=True, capture_stdout=True)
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    m = re.match(r"PORT (\d+)", line)
    if not m:
        raise RuntimeError(f"{name} did not start: {line!r}\n{procs.log_tail(name)}")
    return int(m.group(1)), p.pid


# --------------------------------------------------------------------------------------
# relays: each returns (entry port, pids to profile)


def start_socat(procs: Procs, target: int) -> tuple[int, list[int]]:
    port = free_port()
    p = procs.start(
        "socat",
        [
            "socat",
            "-b",
            "262144",
            f"TCP-LISTEN:{port},bind={LOOPBACK},reuseaddr,fork,backlog=1024,nodelay",
            f"TCP:{LOOPBACK}:{target},nodelay",
        ],
    )
    wait_port(port, 10, p)
    return port, [p.pid]


def make_cert(work: Path) -> tuple[Path, Path]:
    cert, key = work / "stunnel-cert.pem", work / "stunnel-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


TLS13 = "sslVersionMin = TLSv1.3\nsslVersionMax = TLSv1.3\nciphersuites = TLS_AES_256_GCM_SHA384\n"


def start_stunnel(procs: Procs, work: Path, target: int) -> tuple[int, list[int]]:
    cert, key = make_cert(work)
    p_in, p_mid = free_port(), free_port()
    common = "foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
    srv_conf = work / "stunnel-server.conf"
    srv_conf.write_text(
        common
        + f"[bench]\naccept = {LOOPBACK}:{p_mid}\nconnect = {LOOPBACK}:{target}\ncert = {cert}\nkey = {key}\n"
        + TLS13
    )
    cli_conf = work / "stunnel-client.conf"
    cli_conf.write_text(
        common
        + f"[bench]\nclient = yes\naccept = {LOOPBACK}:{p_in}\nconnect = {LOOPBACK}:{p_mid}\n"
        + f"verifyPeer = yes\nCAfile = {cert}\n"
        + TLS13
    )
    s = procs.start("stunnel-server", ["stunnel", str(srv_conf)])
    wait_port(p_mid, 15, s)
    c = procs.start("stunnel-client", ["stunnel", str(cli_conf)])
    wait_port(p_in, 15, c)
    # Confirm what the pair negotiates (TLS 1.3, AES-256-GCM) with a real TLS client.
    out = run_text(
        ["sh", "-c", f"openssl s_client -connect {LOOPBACK}:{p_mid} -brief -CAfile {cert} </dev/null 2>&1"],
        timeout=20,
    )
    if "TLSv1.3" not in out or "TLS_AES_256_GCM_SHA384" not in out:
        raise RuntimeError(f"stunnel does not negotiate TLS 1.3 AES-256-GCM: {out[-400:]}")
    return p_in, [s.pid, c.pid]


def start_spiped(procs: Procs, work: Path, target: int) -> tuple[int, list[int]]:
    keyfile = work / "spiped.key"
    keyfile.write_bytes(os.urandom(32))  # as `dd if=/dev/urandom bs=32 count=1` would
    p_in, p_mid = free_port(), free_port()
    d = procs.start(
        "spiped-decrypt",
        [
            "spiped",
            "-d",
            "-F",
            "-n",
            "0",
            "-o",
            "60",
            "-s",
            f"[{LOOPBACK}]:{p_mid}",
            "-t",
            f"[{LOOPBACK}]:{target}",
            "-k",
            str(keyfile),
            "-p",
            str(work / "spiped-d.pid"),
        ],
    )
    wait_port(p_mid, 15, d)
    e = procs.start(
        "spiped-encrypt",
        [
            "spiped",
            "-e",
            "-F",
            "-n",
            "0",
            "-o",
            "60",
            "-s",
            f"[{LOOPBACK}]:{p_in}",
            "-t",
            f"[{LOOPBACK}]:{p_mid}",
            "-k",
            str(keyfile),
            "-p",
            str(work / "spiped-e.pid"),
        ],
    )
    wait_port(p_in, 15, e)
    return p_in, [d.pid, e.pid]


def start_qeltrix(procs: Procs, work: Path, target: int, args: argparse.Namespace) -> tuple[int, list[int]]:
    common = ["--block-size", str(args.block_size), "--flush-delay", str(args.flush_delay)]
    common += ["--max-seconds", str(args.max_seconds)]
    p_dec, pid_dec = start_py_child(
        procs,
        "qeltrix-decrypt",
        [
            "--child-gateway",
            "decrypt",
            "--target",
            f"{LOOPBACK}:{target}",
            "--stats-file",
            str(work / "qeltrix-decrypt.stats.json"),
            *common,
        ],
    )
    p_in, pid_rt = start_py_child(
        procs,
        "qeltrix-router",
        [
            "--child-gateway",
            "router",
            "--target",
            f"{LOOPBACK}:{p_dec}",
            "--stats-file",
            str(work / "qeltrix-router.stats.json"),
            *common,
        ],
    )
    return p_in, [pid_rt, pid_dec]


# --------------------------------------------------------------------------------------
# clients


def connect(port: int) -> socket.socket:
    s = socket.create_connection((LOOPBACK, port), timeout=OP_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        more = s.recv(n - len(buf))
        if not more:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += more
    return buf


class Pattern:
    """The bytes every client sends: a 1 MiB random pattern, repeated."""

    def __init__(self, seed: int) -> None:
        self.data = random.Random(seed).randbytes(PATTERN_LEN)
        self.view = memoryview(self.data)
        self._crc: dict[int, int] = {}

    def crc(self, nbytes: int) -> int:
        if nbytes not in self._crc:
            crc, left = 0, nbytes
            while left:
                n = min(left, PATTERN_LEN)
                crc = zlib.crc32(self.view[:n], crc)
                left -= n
            self._crc[nbytes] = crc
        return self._crc[nbytes]


def send_stream(port: int, nbytes: int, pat: Pattern) -> float:
    """Send ``nbytes`` to the sink; return seconds until its answer. Raises on a wrong answer."""
    t0 = time.perf_counter()
    with connect(port) as s:
        s.sendall(b"S" + struct.pack("<Q", nbytes))
        left = nbytes
        while left:
            n = min(left, CHUNK)
            s.sendall(pat.view[:n])
            left -= n
        got, crc = REPLY.unpack(recv_exact(s, REPLY.size))
        dt = time.perf_counter() - t0
    if got != nbytes or crc != pat.crc(nbytes):
        raise RuntimeError(f"sink received {got} bytes (crc {crc:08x}), sent {nbytes} (crc {pat.crc(nbytes):08x})")
    return dt


def ping_pong(port: int, count: int, warmup: int = 100) -> dict[str, Any]:
    lat: list[float] = []
    with connect(port) as s:
        s.sendall(b"E")
        for i in range(warmup + count):
            b = bytes([i & 0xFF])
            t0 = time.perf_counter_ns()
            s.sendall(b)
            r = s.recv(1)
            t1 = time.perf_counter_ns()
            if r != b:
                raise RuntimeError(f"echo answered {r!r} to {b!r}")
            if i >= warmup:
                lat.append((t1 - t0) / 1e3)
    lat.sort()
    return {
        "count": count,
        "p50_us": percentile(lat, 50),
        "p90_us": percentile(lat, 90),
        "p99_us": percentile(lat, 99),
        "max_us": lat[-1],
        "mean_us": statistics.fmean(lat),
    }


def aggregate(port: int, conns: int, each: int, pat: Pattern) -> dict[str, Any]:
    pat.crc(each)
    errors: list[str] = []
    times: list[float] = []
    start = threading.Barrier(conns + 1)

    def one() -> None:
        try:
            start.wait(60)
            times.append(send_stream(port, each, pat))
        except Exception as e:  # collected and reported
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    start.wait(60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(OP_TIMEOUT + 60)
    wall = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        errors.append("some connections did not finish in time")
    ok = conns - len(errors)
    return {
        "connections": conns,
        "bytes_each": each,
        "seconds": wall,
        "mb_per_s": ok * each / wall / 1e6,
        "slowest_s": max(times) if times else None,
        "fastest_s": min(times) if times else None,
        "errors": errors[:5],
        "failed": len(errors),
    }


# --------------------------------------------------------------------------------------
# profiling (optional)


# --------------------------------------------------------------------------------------
# main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer ping-pongs")
    ap.add_argument("--stream-size", type=parse_size, default=None, help="single stream (default 1GiB; quick 256MiB)")
    ap.add_argument("--pings", type=int, default=None, help="1-byte round trips (default 10000; quick 2000)")
    ap.add_argument("--conns", type=int, default=50, help="parallel connections for the aggregate test")
    ap.add_argument("--conn-size", type=parse_size, default=None, help="bytes per connection (20MiB; quick 4MiB)")
    ap.add_argument("--relays", default=",".join(RELAYS), help="comma-separated subset of: " + ", ".join(RELAYS))
    ap.add_argument("--block-size", type=parse_size, default=256 << 10, help="qeltrix gateway block size")
    ap.add_argument("--flush-delay", type=float, default=0.0, help="qeltrix gateway flush delay (seconds)")
    ap.add_argument("--build-commit", default=None, help="commit the installed wheel was built from (recorded)")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        metavar="S",
        help="before each contender, wait up to S seconds for other work on the machine to settle",
    )
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--profile", default=None, metavar="DIR", help="record perf/py-spy of the qeltrix gateways")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--max-seconds", type=float, default=1500, help="hard deadline for the whole run")
    ap.add_argument("--apps", action="store_true", help="applications instead: redis-benchmark, pgbench, memory")
    ap.add_argument("--tools", action="store_true", help="bulk with real tools instead: iperf3, curl from nginx")
    ap.add_argument(
        "--app-relays",
        default="direct,qeltrix,qeltrix-pinned,stunnel,spiped",
        help="with --apps or --tools: relays among direct, qeltrix, qeltrix-pinned, stunnel, spiped",
    )
    ap.add_argument("--skip-memory", action="store_true", help="with --apps: skip the RSS/thread measurements")
    ap.add_argument("--child-target", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-gateway", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stats-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_target:
        child_target(args.max_seconds)
        return 0
    if args.child_gateway:
        child_gateway(
            args.child_gateway, args.target, args.block_size, args.flush_delay, args.stats_file, args.max_seconds
        )
        return 0

    if args.apps:
        return main_apps(args)
    if args.tools:
        from _gwtools import main_tools

        return main_tools(args)
    stream_size = args.stream_size or ((256 << 20) if args.quick else (1 << 30))
    pings = args.pings or (2000 if args.quick else 10000)
    conn_size = args.conn_size or ((4 << 20) if args.quick else (20 << 20))
    relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    for r in relays:
        if r not in RELAYS:
            ap.error(f"unknown relay {r!r}")
    need = {"socat": ["socat"], "stunnel": ["stunnel", "openssl"], "spiped": ["spiped"]}
    missing = sorted({t for r in relays for t in need.get(r, []) if not shutil.which(t)})
    if missing:
        log(f"missing tools: {', '.join(missing)} (Debian packages: socat stunnel4 spiped openssl)")
        return 2

    import qeltrix_v6

    env = {
        "commit": args.build_commit or git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "qeltrix_v6": qeltrix_v6.__file__,
        "python": platform.python_version(),
        "cpu": first_line(run_text(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])).strip(),
        "cores": os.cpu_count(),
        "stunnel": first_line(run_text(["sh", "-c", "stunnel -version 2>&1 | grep -m1 '^stunnel'"])),
        "spiped": run_text(["spiped", "-v"]) if "spiped" in relays else None,
        "socat": first_line(run_text(["sh", "-c", "socat -V | grep -m1 'socat version'"]))
        if "socat" in relays
        else None,
        "openssl": run_text(["openssl", "version"]),
        "qeltrix_block_size": args.block_size,
        "qeltrix_flush_delay": args.flush_delay,
    }
    if str(Path(qeltrix_v6.__file__).resolve()).startswith(str(Path(__file__).resolve().parent.parent / "python")):
        log("warning: qeltrix_v6 is imported from the source tree (probably a debug build); see benches/SERVERS.md")

    results: dict[str, Any] = {
        "env": env,
        "stream_size": stream_size,
        "pings": pings,
        "conns": args.conns,
        "conn_size": conn_size,
        "relays": {},
    }

    def body(work: Path, procs: Procs) -> None:
        run(args, work, procs, relays, stream_size, pings, conn_size, results)

    if not run_in_workdir("qeltrix-gwbench-", args.max_seconds, body, args.keep)[0]:
        return 3
    report(results, relays)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if results.get("all_pass") else 1


def main_apps(args: argparse.Namespace) -> int:
    from _gwapps import run_apps

    def body(work: Path, procs: Procs) -> dict[str, Any]:
        echo, _ = start_py_child(procs, "target", ["--child-target", "--max-seconds", str(args.max_seconds)])
        return run_apps(args, work, procs, echo)

    finished, results = run_in_workdir("qeltrix-gwapps-", args.max_seconds, body)
    if not finished:
        return 3
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def run(
    args: argparse.Namespace,
    work: Path,
    procs: Procs,
    relays: list[str],
    stream_size: int,
    pings: int,
    conn_size: int,
    results: dict[str, Any],
) -> None:
    target, _ = start_py_child(procs, "target", ["--child-target", "--max-seconds", str(args.max_seconds)])
    pat = Pattern(args.seed)
    pat.crc(stream_size)
    prof_dir = Path(args.profile) if args.profile else None
    for name in relays:
        busy = wait_quiet(args.wait_quiet)
        log(f"[{name}] starting (other work on the machine: {busy:.0f}% busy)")
        if name == "direct":
            port, pids = target, []
        elif name == "socat":
            port, pids = start_socat(procs, target)
        elif name == "stunnel":
            port, pids = start_stunnel(procs, work, target)
        elif name == "spiped":
            port, pids = start_spiped(procs, work, target)
        else:
            port, pids = start_qeltrix(procs, work, target, args)
        r: dict[str, Any] = {"background_busy_pct": busy}
        try:
            send_stream(port, 1 << 20, pat)  # warm-up; also checks the path works
            profiling = prof_dir is not None and name == "qeltrix"

            @contextlib.contextmanager
            def phase(tag: str, into: dict[str, Any], pids: list[int] = pids, profiling: bool = profiling) -> Any:
                """Profile (optionally) and count the relay processes' CPU seconds during a phase."""
                prof = Profiler(prof_dir, tag, pids) if profiling and prof_dir else contextlib.nullcontext()
                with prof:
                    c0 = cpu_seconds(pids)
                    yield
                    into["relay_cpu_s"] = cpu_seconds(pids) - c0 if pids else None

            with phase("qeltrix-rtt", r):
                r["rtt"] = ping_pong(port, pings)
            r["rtt"]["relay_cpu_us_per_rtt"] = r.pop("relay_cpu_s") / pings * 1e6 if pids else None
            log(
                f"  {pings} x 1-byte round trip: p50 {r['rtt']['p50_us']:.1f} us  p99 {r['rtt']['p99_us']:.1f} us"
                f"  relay CPU {fnum(r['rtt']['relay_cpu_us_per_rtt'], '.0f')} us per round trip"
            )
            st: dict[str, Any] = {}
            with phase("qeltrix-stream", st):
                secs = send_stream(port, stream_size, pat)
            r["stream"] = {"bytes": stream_size, "seconds": secs, "mb_per_s": stream_size / secs / 1e6}
            r["stream"]["relay_cpu_ns_per_byte"] = st["relay_cpu_s"] / stream_size * 1e9 if pids else None
            log(
                f"  single stream {fmt_size(stream_size)}: {r['stream']['mb_per_s']:.0f} MB/s"
                f"  relay CPU {fnum(r['stream']['relay_cpu_ns_per_byte'])} ns/byte"
            )
            ag: dict[str, Any] = {}
            with phase("qeltrix-aggregate", ag):
                r["aggregate"] = aggregate(port, args.conns, conn_size, pat)
            a = r["aggregate"]
            a["relay_cpu_ns_per_byte"] = ag["relay_cpu_s"] / (args.conns * conn_size) * 1e9 if pids else None
            log(
                f"  {args.conns} x {fmt_size(conn_size)}: {a['mb_per_s']:.0f} MB/s "
                f"(slowest connection {fnum(a['slowest_s'])} s, failed {a['failed']})"
                f"  relay CPU {fnum(a['relay_cpu_ns_per_byte'])} ns/byte"
            )
        except Deadline:
            raise  # an Exception too: the end of the run, not this relay's failure
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"
            log(f"  FAILED: {r['error']}")
        finally:
            for p in [p for _n, p, _f in procs.procs if p.pid in pids]:
                procs.stop(p)
        if name == "qeltrix":
            for side in ("router", "decrypt"):
                f = work / f"qeltrix-{side}.stats.json"
                if f.exists():
                    r[f"stats_{side}"] = json.loads(f.read_text())
        results["relays"][name] = r


def report(results: dict[str, Any], relays: list[str]) -> None:
    env = results["env"]
    R = results["relays"]
    print()
    print(
        f"Gateway benchmark  commit {env['commit']}  {env['date']}  {env['cpu']} x{env['cores']}  "
        f"stream {fmt_size(results['stream_size'])}, {results['pings']} pings, "
        f"{results['conns']} x {fmt_size(results['conn_size'])}"
    )
    headers = [
        "relay",
        "stream MB/s",
        "RTT p50 us",
        "RTT p99 us",
        f"{results['conns']}-conn MB/s",
        "CPU ns/B",
        "CPU us/RTT",
        "bg busy%",
        "ok",
    ]
    rows = []
    for name in relays:
        r = R.get(name, {})
        failed = r.get("aggregate", {}).get("failed", 0)
        ok = "NO " + r["error"][:60] if "error" in r else (f"{failed} conns reset" if failed else "yes")
        rows.append(
            [
                name,
                fnum(r.get("stream", {}).get("mb_per_s"), ".0f"),
                fnum(r.get("rtt", {}).get("p50_us"), ".1f"),
                fnum(r.get("rtt", {}).get("p99_us"), ".1f"),
                fnum(r.get("aggregate", {}).get("mb_per_s"), ".0f"),
                fnum(r.get("stream", {}).get("relay_cpu_ns_per_byte")),
                fnum(r.get("rtt", {}).get("relay_cpu_us_per_rtt"), ".0f"),
                fnum(r.get("background_busy_pct"), ".0f"),
                ok,
            ]
        )
    print_table(headers, rows)
    q = R.get("qeltrix")
    checks: list[tuple[str, bool, str]] = []
    if q and "error" not in q:
        print()
        for other in ("stunnel", "spiped", "socat"):
            o = R.get(other)
            if not o or "error" in o:
                continue
            print(
                f"qeltrix vs {other}: stream {fnum(ratio(q['stream']['mb_per_s'], o['stream']['mb_per_s']))}x, "
                f"aggregate {fnum(ratio(q['aggregate']['mb_per_s'], o['aggregate']['mb_per_s']))}x, "
                f"RTT p50 {fnum(ratio(q['rtt']['p50_us'], o['rtt']['p50_us']))}x (lower is better)"
            )
        s = R.get("stunnel")
        if s and "error" not in s:
            x = ratio(q["stream"]["mb_per_s"], s["stream"]["mb_per_s"])
            checks.append(
                (f"single stream >= {TARGET_TPUT_OVER_STUNNEL}x stunnel", x is not None and x >= 2, f"{fnum(x)}x")
            )
            x = ratio(q["aggregate"]["mb_per_s"], s["aggregate"]["mb_per_s"])
            checks.append(
                (f"aggregate >= {TARGET_TPUT_OVER_STUNNEL}x stunnel", x is not None and x >= 2, f"{fnum(x)}x")
            )
            a, b = q["rtt"]["p50_us"], s["rtt"]["p50_us"]
            checks.append(("1-byte RTT p50 <= stunnel's", a <= b, f"{a:.1f} us vs {b:.1f} us"))
        checks.append(("every byte delivered (count + CRC-32 checked)", q["aggregate"]["failed"] == 0, ""))
        for side in ("router", "decrypt"):
            st = q.get(f"stats_{side}")
            if st:
                blocks = st.get("blocks") or 0
                moved = (st.get("bytes_in") or 0) + (st.get("bytes_out") or 0)
                print(
                    f"qeltrix {side}: {st.get('connections')} connections, {blocks} frames, "
                    f"{fnum(moved / blocks / 1024 if blocks else None, '.1f')} KiB per frame on average"
                )
    elif q:
        checks.append(("qeltrix pair ran", False, q.get("error", "")))
    print()
    for what, passed, value in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {what}  {value}")
    results["targets"] = [{"target": w, "pass": p, "value": v} for w, p, v in checks]
    results["all_pass"] = bool(checks) and all(p for _, p, _ in checks)


if __name__ == "__main__":
    sys.exit(main())
