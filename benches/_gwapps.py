"""Applications through gateway pairs (issue 12), for ``bench_gateway.py --apps``.

For each relay (direct, a qeltrix router+decrypt pair in shared-key and in pinned-key mode,
an stunnel TLS 1.3 pair, spiped), in one run and in front of the same servers:

- redis-benchmark GET with ``-c 1`` and ``-c 50`` (``-P 1``): requests/s and p50 latency, and
  the relays' CPU per request at ``-c 1``;
- pgbench TPC-B (``-c 8 -j 2``) and ``-S`` (select only): TPS and average latency (the
  PostgreSQL server is started here, as ``nobody`` when run as root);
- RSS and thread count of each relay process with 200 busy connections (each echoes 10 MiB)
  and with 1,000 open connections.

Needs redis-server, redis-benchmark, PostgreSQL (initdb, pg_ctl, pgbench), stunnel4, spiped
(Debian packages: scripts/install-system-deps.sh and scripts/install-bench-deps.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _srvutil import LOOPBACK, Deadline, Procs, cpu_seconds, fnum, free_port, log, print_table, ratio, wait_port

APP_RELAYS = ("direct", "qeltrix", "qeltrix-pinned", "stunnel", "spiped")


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / tool).exists():
            return str(d / tool)
    raise RuntimeError(f"{tool} not found (Debian package postgresql)")


@contextlib.contextmanager
def postgres() -> Iterator[int]:
    run_as: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="qeltrix-bench-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
        run_as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--"]
    data.chmod(0o700)
    subprocess.run(
        [*run_as, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True, capture_output=True, timeout=120, cwd="/",
    )  # fmt: skip
    port = free_port()
    opts = f"-h {LOOPBACK} -p {port} -k {data} -c fsync=off -c synchronous_commit=off -c max_connections=100"
    subprocess.run(
        [*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(data / "log"), "-w", "start"],
        check=True, capture_output=True, timeout=120, cwd="/",
    )  # fmt: skip
    try:
        subprocess.run(
            [_pg_bin("pgbench"), "-i", "-s", "10", "-q", "-h", LOOPBACK, "-p", str(port), "-U", "postgres", "postgres"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        yield port
    finally:
        subprocess.run(
            [*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60, cwd="/",
        )  # fmt: skip
        shutil.rmtree(data, ignore_errors=True)


def start_qeltrix_cli(procs: Procs, work: Path, target: int, pinned: bool, tag: str) -> tuple[int, list[int]]:
    """A router+decrypt pair of `qeltrix gateway` processes, as an operator runs them."""
    qx = [sys.executable, "-m", "qeltrix_v6", "gateway", "--quiet", "--stats-interval", "0"]
    qx += ["--max-connections", "4096"]
    if pinned:
        ids = {}
        for side in ("router", "decrypt"):
            f = work / f"{side}.id"
            if not f.exists():
                out = subprocess.run(
                    [sys.executable, "-m", "qeltrix_v6", "keygen", "--x25519", "-o", str(f)],
                    check=True, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                (work / f"{side}.pub").write_text(out.stdout.strip().splitlines()[-1])
            ids[side] = f
        cred = {
            s: ["--identity", str(ids[s]), "--peer", (work / f"{o}.pub").read_text().strip()]
            for s, o in (("router", "decrypt"), ("decrypt", "router"))
        }
    else:
        kf = work / "shared.key"
        if not kf.exists():
            kf.write_bytes(os.urandom(32))
            kf.chmod(0o600)
        cred = {s: ["--key-file", str(kf)] for s in ("router", "decrypt")}
    p_dec, p_in = free_port(), free_port()
    d = procs.start(
        f"{tag}-decrypt",
        [
            *qx,
            "--mode",
            "decrypt",
            "--listen",
            f"{LOOPBACK}:{p_dec}",
            "--target",
            f"{LOOPBACK}:{target}",
            *cred["decrypt"],
        ],
    )
    wait_port(p_dec, 30, d)
    r = procs.start(
        f"{tag}-router",
        [*qx, "--mode", "router", "--listen", f"{LOOPBACK}:{p_in}", "--target", f"{LOOPBACK}:{p_dec}", *cred["router"]],
    )
    wait_port(p_in, 30, r)
    return p_in, [r.pid, d.pid]


def start_relay(name: str, procs: Procs, work: Path, target: int) -> tuple[int, list[int]]:
    import bench_gateway as bg

    if name == "direct":
        return target, []
    if name == "stunnel":
        return bg.start_stunnel(procs, work, target)
    if name == "spiped":
        return bg.start_spiped(procs, work, target)
    return start_qeltrix_cli(procs, work, target, name == "qeltrix-pinned", name)


def redis_bench(port: int, clients: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-h", LOOPBACK, "-p", str(port), "-t", "get", "-n", str(n), "-c", str(clients), "-P", "1",
         "-q", "--csv", "--precision", "3"],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    row = [line for line in out.splitlines() if line.startswith('"GET"')][-1]
    f = [float(x.strip('"')) for x in row.split(",")[1:]]
    return {"rps": f[0], "avg_ms": f[1], "p50_ms": f[3], "p99_ms": f[5]}


def pgbench(port: int, select_only: bool, seconds: int) -> dict[str, float]:
    argv = [_pg_bin("pgbench"), "-h", LOOPBACK, "-p", str(port), "-U", "postgres", "-n", "-c", "8", "-j", "2"]
    argv += ["-T", str(seconds), *(["-S"] if select_only else []), "postgres"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=seconds + 120).stdout
    tps = re.search(r"tps = ([\d.]+)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    return {
        "tps": float(tps.group(1)) if tps else 0.0,
        "lat_avg_ms": float(lat.group(1)) if lat else 0.0,
        "failed": int(failed.group(1)) if failed else 0,
        "transactions": int(done.group(1)) if done else 0,
    }


def _proc_mem(pids: list[int]) -> tuple[int, int]:
    """(RSS bytes, threads) summed over these processes."""
    rss = threads = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
    return rss, threads


def memory(port: int, pids: list[int], conns: int, each: int) -> dict[str, float]:
    """Open `conns` connections through the relay to the echo target; each echoes `each` bytes
    (0: just one byte, then held open). Peak RSS and threads of the relay's busiest process."""
    socks: list[socket.socket] = []
    steady: list[tuple[int, int]] = []
    peak: dict[int, tuple[int, int]] = {p: (0, 0) for p in pids}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in pids:
                r, t = _proc_mem([p])
                peak[p] = (max(peak[p][0], r), max(peak[p][1], t))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    payload = os.urandom(min(each, 1 << 20) or 1)
    errors = 0
    try:
        for _ in range(conns):
            s = socket.create_connection((LOOPBACK, port), timeout=120)
            s.sendall(b"E")
            socks.append(s)

        def one(s: socket.socket) -> None:
            nonlocal errors
            try:
                want = max(each, 1)
                reader_got = 0

                def rd() -> None:
                    nonlocal reader_got
                    while reader_got < want and (d := s.recv(1 << 20)):
                        reader_got += len(d)

                t = threading.Thread(target=rd, daemon=True)
                t.start()
                sent = 0
                while sent < want:
                    n = min(len(payload), want - sent)
                    s.sendall(payload[:n])
                    sent += n
                t.join(300)
                if reader_got != want:
                    errors += 1
            except OSError:
                errors += 1

        workers = [threading.Thread(target=one, args=(s,), daemon=True) for s in socks]
        for w in workers:
            w.start()
        for w in workers:
            w.join(600)
        time.sleep(0.3)
        # With every connection still open: the steady state (the peaks include handshakes).
        steady = [_proc_mem([p]) for p in pids]
    finally:
        stop.set()
        sampler.join(5)
        for s in socks:
            s.close()
    rss = max((v[0] for v in peak.values()), default=0)
    thr = max((v[1] for v in peak.values()), default=0)
    return {
        "rss_mib": rss / (1 << 20),
        "threads_peak": thr,
        "threads": max((t for _r, t in steady), default=0),
        "rss_open_mib": max((r for r, _t in steady), default=0) / (1 << 20),
        "errors": errors,
    }


def run_apps(args: argparse.Namespace, work: Path, procs: Procs, echo_port: int) -> dict[str, Any]:
    relays = [r for r in (x.strip() for x in args.app_relays.split(",")) if r]
    n1, n50 = (5000, 50000) if not args.quick else (2000, 20000)
    secs = 10 if not args.quick else 5
    redis_port = free_port()
    rp = procs.start(
        "redis",
        ["redis-server", "--port", str(redis_port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
         "--maxclients", "4096"],
    )  # fmt: skip
    wait_port(redis_port, 20, rp)
    results: dict[str, Any] = {}
    with postgres() as pg_port:
        for name in relays:
            log(f"[apps: {name}]")
            r: dict[str, Any] = {}
            try:
                port, pids = start_relay(name, procs, work, redis_port)
                c0 = cpu_seconds(pids) if pids else 0.0
                r["redis_c1"] = redis_bench(port, 1, n1)
                r["redis_c1"]["relay_cpu_us"] = (cpu_seconds(pids) - c0) / n1 * 1e6 if pids else None
                r["redis_c50"] = redis_bench(port, 50, n50)
                log(f"  redis -c 1 {r['redis_c1']}  -c 50 {r['redis_c50']}")
                for p in [p for _n, p, _f in procs.procs if p.pid in pids]:
                    procs.stop(p)
                port, pids = start_relay(name, procs, work, pg_port)
                r["pg_tpcb"] = pgbench(port, False, secs)
                c0 = cpu_seconds(pids) if pids else 0.0
                r["pg_select"] = pgbench(port, True, secs)
                n_s = r["pg_select"]["transactions"]
                r["pg_select"]["relay_cpu_us"] = (cpu_seconds(pids) - c0) / n_s * 1e6 if pids and n_s else None
                log(f"  pgbench TPC-B {r['pg_tpcb']}  -S {r['pg_select']}")
                for p in [p for _n, p, _f in procs.procs if p.pid in pids]:
                    procs.stop(p)
                if name in ("qeltrix", "stunnel") and not args.skip_memory:
                    port, pids = start_relay(name, procs, work, echo_port)
                    r["mem_200"] = memory(port, pids, 200, 10 << 20)
                    r["mem_1000"] = memory(port, pids, 1000, 0)
                    log(f"  200 x 10 MiB {r['mem_200']}  1000 open {r['mem_1000']}")
                    for p in [p for _n, p, _f in procs.procs if p.pid in pids]:
                        procs.stop(p)
            except Deadline:
                raise  # an Exception too: the end of the run, not this relay's failure
            except Exception as e:  # reported in the table
                r["error"] = f"{type(e).__name__}: {e}"
                log(f"  FAILED: {r['error']}")
            results[name] = r
    procs.stop(rp)
    report_apps(results, relays)
    return results


def report_apps(R: dict[str, Any], relays: list[str]) -> None:
    def g(name: str, *path: str) -> float | None:
        v: Any = R.get(name, {})
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return v if isinstance(v, int | float) else None

    headers = ["relay", "redis c1 p50 ms", "c1 rps", "CPU us/req", "redis c50 p50 ms", "c50 avg ms", "c50 p99 ms",
               "c50 rps", "TPC-B tps", "TPC-B lat ms", "-S tps", "-S lat ms", "-S CPU us/txn",
               "RSS 200x10MiB", "thr 1000"]  # fmt: skip
    rows = []
    for n in relays:
        rows.append([
            n + (" (FAILED)" if "error" in R.get(n, {}) else ""),
            fnum(g(n, "redis_c1", "p50_ms"), ".3f"), fnum(g(n, "redis_c1", "rps"), ".0f"),
            fnum(g(n, "redis_c1", "relay_cpu_us"), ".0f"), fnum(g(n, "redis_c50", "p50_ms"), ".3f"),
            fnum(g(n, "redis_c50", "avg_ms"), ".3f"), fnum(g(n, "redis_c50", "p99_ms"), ".2f"),
            fnum(g(n, "redis_c50", "rps"), ".0f"), fnum(g(n, "pg_tpcb", "tps"), ".0f"),
            fnum(g(n, "pg_tpcb", "lat_avg_ms"), ".2f"), fnum(g(n, "pg_select", "tps"), ".0f"),
            fnum(g(n, "pg_select", "lat_avg_ms"), ".2f"), fnum(g(n, "pg_select", "relay_cpu_us"), ".0f"),
            fnum(g(n, "mem_200", "rss_mib"), ".0f"),
            fnum(g(n, "mem_1000", "threads"), ".0f"),
        ])  # fmt: skip
    print()
    print("Applications through each relay (RSS in MiB and threads: the relay's largest process)")
    print_table(headers, rows)
    for q in ("qeltrix", "qeltrix-pinned"):
        if q not in R:
            continue
        for o in ("stunnel", "spiped"):
            if o not in R:
                continue
            print(
                f"{q} vs {o}: redis c1 p50 {fnum(ratio(g(q, 'redis_c1', 'p50_ms'), g(o, 'redis_c1', 'p50_ms')))}x, "
                f"c50 rps {fnum(ratio(g(q, 'redis_c50', 'rps'), g(o, 'redis_c50', 'rps')))}x, "
                f"c50 p50 {fnum(ratio(g(q, 'redis_c50', 'p50_ms'), g(o, 'redis_c50', 'p50_ms')))}x, "
                f"c50 avg {fnum(ratio(g(q, 'redis_c50', 'avg_ms'), g(o, 'redis_c50', 'avg_ms')))}x, "
                f"TPC-B tps {fnum(ratio(g(q, 'pg_tpcb', 'tps'), g(o, 'pg_tpcb', 'tps')))}x, "
                f"-S tps {fnum(ratio(g(q, 'pg_select', 'tps'), g(o, 'pg_select', 'tps')))}x"
            )
