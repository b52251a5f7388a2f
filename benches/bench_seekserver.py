#!/usr/bin/env python3
"""SeekServer benchmark: random 64 KiB ranges and full-file GETs of one encrypted file,
side by side with ``rclone serve http`` over an rclone *crypt* remote holding the same file
and nginx serving the plaintext (the limit). Issue 4, "Performance".

    python benches/bench_seekserver.py                 # 1 GiB file, 2000 ranges per server
    python benches/bench_seekserver.py --quick         # 128 MiB file, quick smoke run
    python benches/bench_seekserver.py --size 256MiB --requests 5000 --json out.json
    python benches/bench_seekserver.py --profile prof/ # also profile SeekServer (perf, py-spy)

With wrk installed it also runs, per server, ``wrk -c64`` (``--wrk-connections``) on random
ranges, on full GETs of a smaller file (``--full-size``, default 16 MiB) and on random ranges
again while ``--stalled`` (600) clients hold a full GET of the big file open without reading
(from several 127.0.1.x source addresses, so the per-client limit does not refuse them), and
reports req/s, p50/p99, server CPU per request (user + system of the server's processes over
the run, divided by the requests), and peak RSS. SeekServer's CPU per range is compared
with the floor: the SHA-256 + AES-GCM a range must do (1 + (len - 1) / block_size blocks on
average), timed with the same ``qeltrix_v6._crypto`` calls in this process during the run.

Run it with a RELEASE build of qeltrix_v6 (benches/SERVERS.md). Needs ``nginx``, ``rclone``
and ``curl`` (Debian packages); ``wrk`` is used when present. Everything listens on
127.0.0.1 only; every loop is bounded, and every process started here is stopped at the end
(or when the ``--max-seconds`` deadline hits).

Each server runs in its own process (SeekServer too, in a child of this script), so the
Python client here never competes with it for a GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import mmap
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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
    devnull_ok,
    first_line,
    fmt_size,
    fnum,
    free_port,
    git_commit,
    hard_deadline,
    log,
    parse_size,
    peak_rss_bytes,
    percentile,
    print_table,
    ratio,
    run_text,
    wait_port,
    wait_quiet,
)

NAME = "data.bin"
FULL_NAME = "full.bin"  # the smaller file of the wrk full-GET phase
TARGET_P50_MS = 1.0  # 64 KiB random range p50 (issue 4)
TARGET_FULL_OVER_RCLONE = 2.0  # full GET throughput vs rclone crypt (issue 4)
SERVERS = ("qeltrix", "rclone-crypt", "nginx")


# --------------------------------------------------------------------------------------
# child: a SeekServer in its own process


def child_seekserver(root: str, workers: int, block_cache: int, lifetime: float) -> None:
    import qeltrix_v6

    server = qeltrix_v6.SeekServer(
        root, key=KEY, host=LOOPBACK, port=0, workers=workers, block_cache=block_cache, max_connections=4096
    )
    server.start()
    print(f"URL {server.url} PID {os.getpid()}", flush=True)
    child_lifetime_guard(lifetime, server.stop)


# --------------------------------------------------------------------------------------
# setup of the three servers


def make_plaintext(path: Path, size: int, seed: int) -> str:
    """Pseudo-random (incompressible) plaintext; returns its SHA-256."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    chunk = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            data = rng.randbytes(n)
            h.update(data)
            f.write(data)
            left -= n
    return h.hexdigest()


def child_pack(plain: str, dst: str, block_size: int | None) -> None:
    import qeltrix_v6

    kw: dict[str, Any] = {"key": KEY}
    if block_size:
        kw["block_size"] = block_size
    t0 = time.perf_counter()
    r = qeltrix_v6.pack(plain, dst, **kw)
    info = {"seconds": time.perf_counter() - t0, "block_count": r.block_count, "container_len": r.container_len}
    print("PACKED " + json.dumps(info), flush=True)


def pack_container(plain: Path, dst: Path, block_size: int | None, size: int) -> dict[str, Any]:
    """Pack in a child process with a time limit: a pack that hangs in native code cannot be
    interrupted from Python, but its process can be killed."""
    limit = 120 + size / 5e6  # 5 MB/s is ~100x slower than a release build packs here
    argv = [sys.executable, __file__, "--child-pack", str(plain), str(dst)]
    if block_size:
        argv += ["--block-size", str(block_size)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, 9)
        p.wait()
        raise RuntimeError(f"qeltrix pack of {fmt_size(size)} did not finish in {limit:.0f} s (hung?)") from None
    m = re.search(r"^PACKED (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"qeltrix pack failed (exit {p.returncode}): {out[-500:]}")
    return dict(json.loads(m.group(1)))


def start_qeltrix(procs: Procs, root: Path, args: argparse.Namespace) -> tuple[str, int]:
    p = procs.start(
        "seekserver",
        [
            sys.executable,
            __file__,
            "--child-seekserver",
            str(root),
            "--qx-workers",
            str(args.qx_workers),
            "--qx-block-cache",
            str(args.qx_block_cache),
            "--max-seconds",
            str(args.max_seconds),
        ],
        stdin_pipe=True,
        capture_stdout=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    m = re.match(r"URL (\S+) PID (\d+)", line)
    if not m:
        raise RuntimeError(f"SeekServer child did not start: {line!r}\n{procs.log_tail('seekserver')}")
    return m.group(1), p.pid


def start_rclone(procs: Procs, work: Path, plain: Path) -> tuple[str, int]:
    conf = work / "rclone.conf"
    store = work / "rclone-crypt-store"
    store.mkdir()
    pw1 = run_text(["rclone", "obscure", "qeltrix-bench-password-1"])
    pw2 = run_text(["rclone", "obscure", "qeltrix-bench-salt-2"])
    conf.write_text(
        "[secret]\n"
        "type = crypt\n"
        f"remote = {store}\n"
        "filename_encryption = standard\n"
        "directory_name_encryption = true\n"
        f"password = {pw1}\n"
        f"password2 = {pw2}\n"
    )
    base = ["rclone", "--config", str(conf)]
    t0 = time.perf_counter()
    subprocess.run([*base, "copy", str(plain), "secret:"], check=True, timeout=1800)
    copy_s = time.perf_counter() - t0
    stored = list(store.iterdir())
    if len(stored) != 1 or stored[0].name == NAME:
        raise RuntimeError(f"rclone crypt store does not hold one encrypted file: {stored}")
    if (plain.parent / FULL_NAME).exists():
        subprocess.run([*base, "copy", str(plain.parent / FULL_NAME), "secret:"], check=True, timeout=600)
    port = free_port()
    p = procs.start("rclone", [*base, "serve", "http", "secret:", "--addr", f"{LOOPBACK}:{port}", "--read-only"])
    wait_port(port, 30, p)
    log(f"  rclone crypt: copied in {copy_s:.1f} s; stored as {stored[0].name} ({stored[0].stat().st_size} bytes)")
    return f"http://{LOOPBACK}:{port}", p.pid


def start_nginx(procs: Procs, work: Path, plain_dir: Path, workers: int) -> tuple[str, int]:
    d = work / "nginx"
    (d / "tmp").mkdir(parents=True)
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(
        f"""worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush off;  # on: a 64 KiB range response stalls ~40 ms (TCP_CORK + delayed ACK)
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    server {{
        listen {LOOPBACK}:{port};
        root {plain_dir};
        location / {{ }}
    }}
}}
"""
    )
    p = procs.start("nginx", ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf), "-g", "daemon off;"])
    wait_port(port, 15, p)
    return f"http://{LOOPBACK}:{port}", p.pid


# --------------------------------------------------------------------------------------
# clients


def split_url(url: str) -> tuple[str, int]:
    m = re.match(r"http://([^:/]+):(\d+)", url)
    assert m, url
    return m.group(1), int(m.group(2))


def range_run(url: str, offsets: list[int], length: int, sample_every: int) -> dict[str, Any]:
    """Sequential 64 KiB range GETs over one keep-alive connection (reconnects are counted)."""
    host, port = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    lat: list[float] = []
    samples: list[tuple[int, bytes]] = []
    errors = 0
    reconnects = -1  # the first connect is not a reconnect
    t_start = time.perf_counter()
    for i, off in enumerate(offsets):
        if conn.sock is None:
            reconnects += 1
        hdr = {"Range": f"bytes={off}-{off + length - 1}"}
        t0 = time.perf_counter_ns()
        conn.request("GET", "/" + NAME, headers=hdr)
        r = conn.getresponse()
        body = r.read()
        t1 = time.perf_counter_ns()
        lat.append((t1 - t0) / 1e6)
        if r.status != 206 or len(body) != length:
            errors += 1
        if i % sample_every == 0:
            samples.append((off, body))
    wall = time.perf_counter() - t_start
    conn.close()
    lat.sort()
    return {
        "requests": len(offsets),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1],
        "mean_ms": statistics.fmean(lat),
        "req_per_s": len(offsets) / wall,
        "errors": errors,
        "reconnects": max(0, reconnects),
        "_samples": samples,
    }


def verify_samples(samples: list[tuple[int, bytes]], plain: mmap.mmap, length: int) -> tuple[int, int]:
    bad = sum(1 for off, body in samples if body != plain[off : off + length])
    return len(samples), bad


WRK_LUA = """
local size = {size}
local len = {length}
local path = "{path}"
local seeded = false
request = function()
  if not seeded then
    math.randomseed(tonumber(tostring({{}}):match("0x(%x+)") or "1", 16) % 2147483647)
    seeded = true
  end
  local a = math.random(0, size - len)
  return wrk.format("GET", path, {{["Range"] = "bytes=" .. a .. "-" .. (a + len - 1)}})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"p50_us\\":%d,\\"p99_us\\":%d,\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d," ..
    "\\"errors\\":%d}}\\n",
    latency:percentile(50), latency:percentile(99), summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


WRK_FULL_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"p50_us\\":%d,\\"p99_us\\":%d,\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d," ..
    "\\"errors\\":%d}}\\n",
    latency:percentile(50), latency:percentile(99), summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_measured(url: str, path: str, script: Path, conns: int, seconds: int, leader: int) -> dict[str, Any] | None:
    """``wrk -t2 -c{conns}`` against ``url + path``, with the server's CPU time over the run."""
    cpu0 = cpu_seconds([leader])
    out = run_text(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s", str(script), url + path],
        timeout=seconds + 90,
    )
    cpu = cpu_seconds([leader]) - cpu0
    rss = peak_rss_bytes([leader], "VmRSS:")
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        log(f"  wrk failed: {out[-500:]}")
        return None
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    n = max(1, d["requests"])
    return {
        "p50_ms": d["p50_us"] / 1e3,
        "p99_ms": d["p99_us"] / 1e3,
        "req_per_s": d["requests"] / secs,
        "requests": d["requests"],
        "errors": d["errors"],
        "mb_per_s": d["bytes"] / secs / 1e6,
        "cpu_s": cpu,
        "cpu_ms_per_req": cpu * 1e3 / n,
        "cpu_ms_per_mb": cpu * 1e3 / max(1e-9, d["bytes"] / 1e6),
        "rss_after": rss,
    }


class Stalled:
    """``n`` clients that each send a full GET of the big file and never read the answer, from
    127.0.1.x source addresses (``per_addr`` each), with small receive buffers."""

    def __init__(self, url: str, n: int, per_addr: int = 32) -> None:
        host, port = split_url(url)
        self.socks: list[socket.socket] = []
        req = f"GET /{NAME} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((f"127.0.1.{1 + i // per_addr}", 0))
            s.settimeout(10)
            s.connect((host, port))
            s.sendall(req)
            self.socks.append(s)

    def alive(self) -> int:
        """How many are still connected (the server has not closed them)."""
        n = 0
        for s in self.socks:
            try:
                got = s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            except BlockingIOError:
                n += 1  # nothing to read yet: still connected
                continue
            except OSError:
                continue
            n += bool(got)  # data waiting: connected; b"": closed by the server
        return n

    def close(self) -> None:
        for s in self.socks:
            s.close()


def wait_cpu_settled(leader: int, limit: float = 120.0) -> float:
    """Wait until the server's processes use under 5% of a core over half a second (or
    ``limit`` seconds pass); returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = cpu_seconds([leader])
        time.sleep(0.5)
        if cpu_seconds([leader]) - c0 < 0.025:
            break
    return time.monotonic() - t0


def crypto_floor_ms_per_block(block_size: int, seconds: float = 1.0) -> float:
    """CPU ms of the SHA-256 + AES-256-GCM decryption one block of plaintext needs, through
    ``qeltrix_v6._crypto`` (the calls the server makes), measured here and now."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from qeltrix_v6 import _crypto

    key, nonce = os.urandom(32), os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, os.urandom(block_size), b"aad")
    out = bytearray(block_size)
    n = 0
    t0 = time.process_time()
    while True:
        AESGCM(key).decrypt_into(nonce, ct, b"aad", out)
        _crypto.sha256(out)
        n += 1
        used = time.process_time() - t0
        if used >= seconds:
            return used * 1e3 / n


def full_get_curl(url: str, size: int, runs: int) -> dict[str, Any]:
    speeds = []
    for _ in range(runs):
        out = run_text(
            [
                "curl",
                "-s",
                "-o",
                os.devnull,
                "--max-time",
                "600",
                "-w",
                "%{http_code} %{size_download} %{time_total}",
                url + "/" + NAME,
            ],
            timeout=700,
        )
        parts = out.split()
        if len(parts) != 3 or parts[0] != "200" or int(float(parts[1])) != size:
            raise RuntimeError(f"full GET of {url} failed: {out!r}")
        speeds.append(size / float(parts[2]) / 1e6)
    return {"mb_per_s": statistics.median(speeds), "runs_mb_per_s": speeds}


def full_get_verify(url: str, size: int, want_sha: str) -> bool:
    host, port = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request("GET", "/" + NAME)
    r = conn.getresponse()
    h = hashlib.sha256()
    got = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := r.readinto(buf):
        h.update(view[:n])
        got += n
    conn.close()
    return r.status == 200 and got == size and h.hexdigest() == want_sha


# --------------------------------------------------------------------------------------
# profiling (optional)


# --------------------------------------------------------------------------------------
# main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=None, help="file size (default 1GiB; --quick: 128MiB)")
    ap.add_argument("--quick", action="store_true", help="128 MiB file, fewer repetitions")
    ap.add_argument("--requests", type=int, default=2000, help="random range GETs per server (Python client)")
    ap.add_argument("--range-size", type=parse_size, default=65536, help="bytes per range request (default 64KiB)")
    ap.add_argument("--full-runs", type=int, default=None, help="full-file GETs per server (median; default 3)")
    ap.add_argument("--wrk", choices=("auto", "no"), default="auto", help="also run wrk with a Lua script")
    ap.add_argument("--wrk-seconds", type=int, default=None, help="wrk duration per server (default 10; quick 5)")
    ap.add_argument("--wrk-connections", type=int, default=64)
    ap.add_argument("--full-size", type=parse_size, default=16 << 20, help="file of the wrk full-GET phase")
    ap.add_argument("--stalled", type=int, default=600, help="clients holding a full GET open without reading")
    ap.add_argument("--block-size", type=parse_size, default=None, help="qeltrix block size (default: library's)")
    ap.add_argument("--qx-workers", type=int, default=2, help="SeekServer tokio worker threads")
    ap.add_argument(
        "--qx-block-cache", type=parse_size, default=64 << 20, help="SeekServer decrypted-block cache (bytes)"
    )
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of: " + ", ".join(SERVERS))
    ap.add_argument("--build-commit", default=None, help="commit the installed wheel was built from (recorded)")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        metavar="S",
        help="before each contender, wait up to S seconds for other work on the machine to settle",
    )
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--workdir", default=None, help="where to put the files (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--profile", default=None, metavar="DIR", help="record perf/py-spy of SeekServer into DIR")
    ap.add_argument("--max-seconds", type=float, default=1800, help="hard deadline for the whole run")
    ap.add_argument("--child-seekserver", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-pack", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_pack:
        child_pack(args.child_pack[0], args.child_pack[1], args.block_size)
        return 0
    if args.child_seekserver:
        child_seekserver(args.child_seekserver, args.qx_workers, args.qx_block_cache, args.max_seconds)
        return 0

    size = args.size or ((128 << 20) if args.quick else (1 << 30))
    full_runs = args.full_runs or (2 if args.quick else 3)
    wrk_seconds = args.wrk_seconds or (5 if args.quick else 10)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r}")
    missing = [
        t for t, need in (("nginx", "nginx"), ("rclone", "rclone-crypt")) if need in servers and not shutil.which(t)
    ]
    if not shutil.which("curl"):
        missing.append("curl")
    if missing:
        log(f"missing tools: {', '.join(missing)} (apt-get install {' '.join(missing)})")
        return 2
    if not devnull_ok():
        log("/dev/null is not a character device: fix it first (mknod -m 666 /dev/null c 1 3)")
        return 2
    use_wrk = args.wrk == "auto" and shutil.which("wrk") is not None

    import qeltrix_v6

    env = {
        "commit": args.build_commit or git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "qeltrix_v6": qeltrix_v6.__file__,
        "python": platform.python_version(),
        "cpu": first_line(run_text(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])).strip(),
        "cores": os.cpu_count(),
        "nginx": run_text(["nginx", "-v"]) if "nginx" in servers else None,
        "rclone": first_line(run_text(["rclone", "version"])) if "rclone-crypt" in servers else None,
        "wrk": first_line(run_text(["wrk", "-v"])) if use_wrk else None,
        "curl": first_line(run_text(["curl", "--version"])),
    }
    if str(Path(qeltrix_v6.__file__).resolve()).startswith(str(Path(__file__).resolve().parent.parent / "python")):
        log("warning: qeltrix_v6 is imported from the source tree (probably a debug build); see benches/SERVERS.md")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="qeltrix-seekbench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # nginx workers run as an unprivileged user
    procs = Procs(work)
    results: dict[str, Any] = {
        "env": env,
        "size": size,
        "range_size": args.range_size,
        "wrk_connections": args.wrk_connections,
        "servers": {},
    }
    try:
        cleanup = None if (args.keep or args.workdir) else (lambda: shutil.rmtree(work, ignore_errors=True))
        with hard_deadline(args.max_seconds, procs, cleanup):
            run(args, work, procs, size, servers, full_runs, use_wrk, wrk_seconds, results)
    except Deadline as e:
        log(f"ABORTED: {e}")
        return 3
    finally:
        procs.stop_all()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(results, servers)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if results.get("all_pass") else 1


def run(
    args: argparse.Namespace,
    work: Path,
    procs: Procs,
    size: int,
    servers: list[str],
    full_runs: int,
    use_wrk: bool,
    wrk_seconds: int,
    results: dict[str, Any],
) -> None:
    plain_dir = work / "plain"
    root = work / "vault"
    plain_dir.mkdir(mode=0o755)
    root.mkdir()
    plain = plain_dir / NAME
    log(f"generating {fmt_size(size)} of plaintext in {work}")
    want_sha = make_plaintext(plain, size, args.seed)
    os.chmod(plain, 0o644)
    full_plain = plain_dir / FULL_NAME
    if use_wrk:
        make_plaintext(full_plain, args.full_size, args.seed + 2)
        os.chmod(full_plain, 0o644)
    if "qeltrix" in servers:
        info = pack_container(plain, root / (NAME + ".qltx"), args.block_size, size)
        log(f"  qeltrix pack: {info['seconds']:.1f} s, {info['block_count']} blocks")
        results["pack"] = info
        if use_wrk:
            pack_container(full_plain, root / (FULL_NAME + ".qltx"), args.block_size, args.full_size)
    urls: dict[str, tuple[str, int]] = {}
    if "qeltrix" in servers:
        urls["qeltrix"] = start_qeltrix(procs, root, args)
    if "rclone-crypt" in servers:
        urls["rclone-crypt"] = start_rclone(procs, work, plain)
    if "nginx" in servers:
        urls["nginx"] = start_nginx(procs, work, plain_dir, args.nginx_workers)
    for name, (url, pid) in urls.items():
        log(f"  {name}: {url} (pid {pid})")

    length = args.range_size
    rng = random.Random(args.seed + 1)
    offsets = [rng.randrange(0, size - length + 1) for _ in range(args.requests)]
    warm = [rng.randrange(0, size - length + 1) for _ in range(50)]
    script = work / "ranges.lua"
    script.write_text(WRK_LUA.format(size=size, length=length, path="/" + NAME))
    full_script = work / "full.lua"
    full_script.write_text(WRK_FULL_LUA.format())
    prof_dir = Path(args.profile) if args.profile else None

    with open(plain, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as pm:
        for name in servers:
            url, pid = urls[name]
            busy = wait_quiet(args.wait_quiet)
            r: dict[str, Any] = {"url": url, "background_busy_pct": busy}
            log(
                f"[{name}] {args.requests} random {fmt_size(length)} ranges, one keep-alive connection"
                f" (other work on the machine: {busy:.0f}% busy)"
            )
            range_run(url, warm, length, 1)  # opens the container / warms the connection path
            prof = (
                Profiler(prof_dir, f"{name}-ranges", pid, perf_hz=997, rate=250)
                if (prof_dir and name == "qeltrix")
                else None
            )
            with prof or contextlib.nullcontext():
                rr = range_run(url, offsets, length, max(1, args.requests // 200))
            checked, bad = verify_samples(rr.pop("_samples"), pm, length)
            rr["verified"], rr["verify_failures"] = checked, bad
            r["ranges"] = rr
            log(
                f"  p50 {rr['p50_ms']:.3f} ms  p99 {rr['p99_ms']:.3f} ms  {rr['req_per_s']:.0f} req/s  "
                f"errors {rr['errors']}  reconnects {rr['reconnects']}  verified {checked - bad}/{checked}"
            )
            if use_wrk:
                c = args.wrk_connections
                if name == "qeltrix":
                    # Timed right before the server's own run: the machine's speed drifts.
                    bs = args.block_size or 256 * 1024
                    per_block = crypto_floor_ms_per_block(bs)
                    blocks = 1 + (args.range_size - 1) / bs
                    results["floor"] = {
                        "block_size": bs,
                        "ms_per_block": per_block,
                        "blocks_per_range": blocks,
                        "ms_per_range": per_block * blocks,
                    }
                    log(f"  crypto floor: {per_block:.3f} ms CPU per {fmt_size(bs)} block")
                log(f"[{name}] wrk -c{c} -d{wrk_seconds}s random ranges")
                r["wrk"] = w = wrk_measured(url, "/" + NAME, script, c, wrk_seconds, pid)
                if w:
                    log(
                        f"  p50 {w['p50_ms']:.3f} ms  p99 {w['p99_ms']:.3f} ms  {w['req_per_s']:.0f} req/s  "
                        f"CPU {w['cpu_ms_per_req']:.3f} ms/req"
                    )
                log(f"[{name}] wrk -c{c} -d{wrk_seconds}s full GETs of {fmt_size(args.full_size)}")
                r["wrk_full"] = w = wrk_measured(url, "/" + FULL_NAME, full_script, c, wrk_seconds, pid)
                if w:
                    log(
                        f"  p50 {w['p50_ms']:.1f} ms  p99 {w['p99_ms']:.1f} ms  {w['req_per_s']:.1f} req/s  "
                        f"{w['mb_per_s']:.0f} MB/s  CPU {w['cpu_ms_per_mb']:.3f} ms/MB"
                    )
                if args.stalled:
                    log(f"[{name}] {args.stalled} stalled clients + wrk -c{c} random ranges")
                    stalled = Stalled(url, args.stalled)
                    try:
                        # Each stalled response first fills its socket buffers (MBs each): wait
                        # until that work is done so it is not counted against the ranges.
                        settle_s = wait_cpu_settled(pid)
                        log(f"  stalled responses settled after {settle_s:.1f} s")
                        r["wrk_stalled"] = w = wrk_measured(url, "/" + NAME, script, c, wrk_seconds, pid)
                        r["stalled_alive"] = stalled.alive()
                    finally:
                        stalled.close()
                    if w:
                        log(
                            f"  p50 {w['p50_ms']:.3f} ms  p99 {w['p99_ms']:.3f} ms  {w['req_per_s']:.0f} req/s  "
                            f"CPU {w['cpu_ms_per_req']:.3f} ms/req  stalled still connected: {r['stalled_alive']}"
                        )
                r["peak_rss"] = peak_rss_bytes([pid])
            log(f"[{name}] full GET x{full_runs} (curl -o /dev/null)")
            prof = (
                Profiler(prof_dir, f"{name}-full", pid, perf_hz=997, rate=250)
                if (prof_dir and name == "qeltrix")
                else None
            )
            with prof or contextlib.nullcontext():
                r["full"] = full_get_curl(url, size, full_runs)
            r["full"]["verified"] = full_get_verify(url, size, want_sha)
            log(f"  {r['full']['mb_per_s']:.0f} MB/s  body sha256 ok: {r['full']['verified']}")
            results["servers"][name] = r


def print_wrk_table(results: dict[str, Any], servers: list[str]) -> None:
    S = results["servers"]
    if not any(S.get(n, {}).get("wrk") for n in servers):
        return
    print()
    c = results.get("wrk_connections")
    print(f"wrk -t2 -c{c}: server CPU = user + system of the server's processes / requests")
    headers = ["server", "phase", "req/s", "p50 ms", "p99 ms", "MB/s", "CPU ms/req", "errors", "RSS after", "peak RSS"]
    rows = []
    phases = (("wrk", "64 KiB ranges"), ("wrk_full", "full GETs"), ("wrk_stalled", "ranges + stalled"))
    for name in servers:
        r = S.get(name) or {}
        for key, label in phases:
            w = r.get(key)
            if not w:
                continue
            rows.append(
                [
                    name,
                    label,
                    fnum(w["req_per_s"], ".0f"),
                    fnum(w["p50_ms"], ".2f"),
                    fnum(w["p99_ms"], ".2f"),
                    fnum(w["mb_per_s"], ".0f"),
                    fnum(w["cpu_ms_per_req"], ".3f"),
                    str(w["errors"]),
                    f"{w['rss_after'] / (1 << 20):.0f} MiB",
                    f"{r.get('peak_rss', 0) / (1 << 20):.0f} MiB" if key == "wrk" else "",
                ]
            )
    print_table(headers, rows)
    floor = results.get("floor")
    q = S.get("qeltrix") or {}
    if floor and q.get("wrk"):
        f_req = floor["ms_per_range"]
        print(
            f"crypto floor: {floor['ms_per_block']:.3f} ms per {fmt_size(floor['block_size'])} block (SHA-256 + "
            f"AES-GCM via qeltrix_v6._crypto, CPU time), x {floor['blocks_per_range']:.3f} blocks per range "
            f"= {f_req:.3f} ms; SeekServer CPU per range {q['wrk']['cpu_ms_per_req']:.3f} ms = "
            f"{fnum(ratio(q['wrk']['cpu_ms_per_req'], f_req))}x the floor"
        )
        if q.get("wrk_full"):
            f_mb = floor["ms_per_block"] / (floor["block_size"] / 1e6)
            print(
                f"full GETs: SeekServer CPU {q['wrk_full']['cpu_ms_per_mb']:.3f} ms/MB = "
                f"{fnum(ratio(q['wrk_full']['cpu_ms_per_mb'], f_mb))}x the floor ({f_mb:.3f} ms/MB)"
            )
    for other in ("nginx", "rclone-crypt"):
        o = S.get(other) or {}
        parts = []
        for key, label in phases:
            a, b = q.get(key), o.get(key)
            if a and b:
                parts.append(
                    f"{label}: req/s {fnum(ratio(a['req_per_s'], b['req_per_s']))}x, "
                    f"CPU/req {fnum(ratio(a['cpu_ms_per_req'], b['cpu_ms_per_req']))}x"
                )
        if parts:
            rss = fnum(ratio(q.get("peak_rss"), o.get("peak_rss")))
            print(f"qeltrix / {other}: " + "; ".join(parts) + f"; peak RSS {rss}x")


def report(results: dict[str, Any], servers: list[str]) -> None:
    env = results["env"]
    S = results["servers"]
    print()
    print(
        f"SeekServer benchmark  commit {env['commit']}  {env['date']}  {fmt_size(results['size'])} file, "
        f"{fmt_size(results['range_size'])} ranges  {env['cpu']} x{env['cores']}"
    )
    headers = [
        "server",
        "p50 ms",
        "p99 ms",
        "req/s",
        "wrk p50",
        "wrk p99",
        "wrk req/s",
        "full MB/s",
        "bg busy%",
        "verified",
    ]
    rows = []
    for name in servers:
        if name not in S:
            continue
        r = S[name]
        rr, w, full = r["ranges"], r.get("wrk") or {}, r["full"]
        ok = rr["verify_failures"] == 0 and rr["errors"] == 0 and full["verified"]
        rows.append(
            [
                name,
                fnum(rr["p50_ms"], ".3f"),
                fnum(rr["p99_ms"], ".3f"),
                fnum(rr["req_per_s"], ".0f"),
                fnum(w.get("p50_ms"), ".3f"),
                fnum(w.get("p99_ms"), ".3f"),
                fnum(w.get("req_per_s"), ".0f"),
                fnum(full["mb_per_s"], ".0f"),
                fnum(r.get("background_busy_pct"), ".0f"),
                "yes" if ok else "NO",
            ]
        )
    print_table(headers, rows)
    print_wrk_table(results, servers)

    q = S.get("qeltrix")
    checks: list[tuple[str, bool | None, str]] = []
    if q:
        print()
        for other in ("rclone-crypt", "nginx"):
            o = S.get(other)
            if not o:
                continue
            qw, ow = q.get("wrk") or {}, o.get("wrk") or {}
            print(
                f"qeltrix vs {other}: p50 latency {fnum(ratio(o['ranges']['p50_ms'], q['ranges']['p50_ms']))}x faster, "
                f"req/s {fnum(ratio(q['ranges']['req_per_s'], o['ranges']['req_per_s']))}x, "
                f"wrk req/s {fnum(ratio(qw.get('req_per_s'), ow.get('req_per_s')))}x, "
                f"full GET {fnum(ratio(q['full']['mb_per_s'], o['full']['mb_per_s']))}x"
            )
        p50 = q["ranges"]["p50_ms"]
        checks.append((f"64 KiB random range p50 < {TARGET_P50_MS} ms", p50 < TARGET_P50_MS, f"{p50:.3f} ms"))
        rc = S.get("rclone-crypt")
        if rc:
            x = ratio(q["full"]["mb_per_s"], rc["full"]["mb_per_s"])
            checks.append(
                (f"full GET >= {TARGET_FULL_OVER_RCLONE}x rclone crypt", x is not None and x >= 2.0, f"{fnum(x)}x")
            )
        ok = all(
            S[n]["ranges"]["verify_failures"] == 0 and S[n]["ranges"]["errors"] == 0 and S[n]["full"]["verified"]
            for n in S
        )
        checks.append(("every response verified against the plaintext", ok, ""))
    print()
    for what, passed, value in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {what}  {value}")
    results["targets"] = [{"target": w, "pass": p, "value": v} for w, p, v in checks]
    results["all_pass"] = bool(checks) and all(p for _, p, _ in checks)


if __name__ == "__main__":
    sys.exit(main())
