"""Qeltrix on object storage beside rclone crypt, on one moto S3 server, in one run.

Both tools store the same random file encrypted in the same bucket and serve it over HTTP:
``qeltrix serve s3://bench/q`` against ``rclone serve http`` of a crypt remote over an S3
remote. Every request to S3 goes through a counting proxy (tests/s3util.py), so GETs per
plaintext range are counted where they arrive. Printed: pack/upload throughput (``qeltrix
pack`` vs ``rclone rcat``, median of ``--repeats`` copies stored alternately), full GET
throughput through each server (median over the copies, each fetched whole once, the tools
alternating) with the S3 GETs each took, 64 KiB random range latency p50/p99 and S3 GETs per
range, and the qeltrix/rclone ratios.

    python benches/bench_s3.py --size-mib 64 --ranges 200

Needs ``rclone`` (Debian package; scripts/install-system-deps.sh) and the ``test`` extra.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3util import aws_env, moto_server, proxy

BUCKET = "bench"
RANGE = 64 << 10


def run(cmd: list[str], env: dict[str, str], stdin: object = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdin=stdin, check=True, stdout=subprocess.DEVNULL)  # type: ignore[arg-type]
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start a server on 127.0.0.1:port and wait until it accepts connections."""
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"{cmd[0]} did not start")


def get(conn: http.client.HTTPConnection, path: str, rng: str | None) -> bytes:
    conn.request("GET", path, headers={"Range": rng} if rng else {})
    r = conn.getresponse()
    body = r.read()
    if r.status not in (200, 206):
        raise RuntimeError(f"GET {path} {rng}: {r.status} {body[:200]!r}")
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--ranges", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="downloads timed cold, and as many warm, per tool")
    args = ap.parse_args()
    size = args.size_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    data = random.Random(1).randbytes(size)
    (tmp / "data.bin").write_bytes(data)
    (tmp / "k.key").write_bytes(os.urandom(32))
    import boto3

    with moto_server() as up, proxy(up) as (endpoint, state):
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://{up[0]}:{up[1]}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=BUCKET)
        # rclone checks an upload with HEAD ?versionId=..., which moto refuses on an unversioned bucket.
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        env = aws_env(endpoint)
        obscured = subprocess.run(["rclone", "obscure", "bench-password"], capture_output=True, text=True, check=True)
        env.update(
            RCLONE_CONFIG_S3_TYPE="s3",
            RCLONE_CONFIG_S3_PROVIDER="Other",
            RCLONE_CONFIG_S3_ENDPOINT=endpoint,
            RCLONE_CONFIG_S3_ACCESS_KEY_ID="testing",
            RCLONE_CONFIG_S3_SECRET_ACCESS_KEY="testing",
            RCLONE_CONFIG_S3_REGION="us-east-1",
            RCLONE_CONFIG_CR_TYPE="crypt",
            RCLONE_CONFIG_CR_REMOTE=f"s3:{BUCKET}/r",
            RCLONE_CONFIG_CR_PASSWORD=obscured.stdout.strip(),
            RCLONE_CONFIG_CR_FILENAME_ENCRYPTION="off",
            RCLONE_CONFIG_CR_DIRECTORY_NAME_ENCRYPTION="false",
            RCLONE_CONFIG=os.devnull,
        )
        q = [sys.executable, "-m", "qeltrix_v6"]
        # Each tool stores 2 x `repeats` copies, alternating, so that load on the machine falls
        # on both alike; every copy is fetched whole once (below).
        t_q, t_r = [], []
        for i in range(2 * args.repeats):
            with (tmp / "data.bin").open("rb") as f:
                dst = f"s3://{BUCKET}/q/data{i}.bin.qltx"
                t_q.append(run([*q, "pack", "-q", "--key-file", str(tmp / "k.key"), "-", dst], env, f))
            with (tmp / "data.bin").open("rb") as f:
                t_r.append(run(["rclone", "rcat", f"cr:data{i}.bin"], env, f))
        tq, tr = statistics.median(t_q), statistics.median(t_r)
        print(f"pack to S3 ({args.size_mib} MiB, median of {len(t_q)}): qeltrix {size / tq / 2**20:7.1f} MiB/s   "
              f"rclone rcat {size / tr / 2**20:7.1f} MiB/s   ratio {tr / tq:.2f}x   "
              f"(ratios per copy {' '.join(f'{r / q:.2f}' for q, r in zip(t_q, t_r, strict=True))})")  # fmt: skip

        qport, rport = free_port(), free_port()
        key_file = str(tmp / "k.key")
        qs = start([*q, "serve", "--port", str(qport), "--block-cache", "0", "--key-file", key_file, f"s3://{BUCKET}/q"],
                   env, qport)  # fmt: skip
        rs = start(["rclone", "serve", "http", "cr:", "--addr", f"127.0.0.1:{rport}", "--vfs-cache-mode", "off"],
                   env, rport)  # fmt: skip
        tools = (
            ("qeltrix", f"127.0.0.1:{qport}", "q/data{}.bin.qltx"),
            ("rclone", f"127.0.0.1:{rport}", "r/data{}.bin.bin"),
        )
        try:
            results = {}
            for name, addr, obj in tools:
                host, port = addr.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                rnd = random.Random(7)
                lat = []
                before = len(state.gets(obj.format(0)))
                for _ in range(args.ranges):
                    off = rnd.randrange(0, size - RANGE)
                    t = time.perf_counter()
                    body = get(conn, "/data0.bin", f"bytes={off}-{off + RANGE - 1}")
                    lat.append(time.perf_counter() - t)
                    assert body == data[off : off + RANGE], f"{name}: range differs"
                gets = (len(state.gets(obj.format(0))) - before) / args.ranges
                conn.close()
                lat.sort()
                p50 = statistics.median(lat) * 1e3
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
                results[name] = [p50, p99, gets]
            # Whole downloads, alternating tools, each copy once. Cold: the server has not
            # opened the object (copy 0: not within the 5 s qeltrix keeps an object open after
            # the ranges). Warm: a 1-byte range just before, so the download itself is timed
            # (qeltrix opens a container with two GETs, the header and the index; rclone's
            # listing gave it the size).
            full: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
            full_gets: dict[str, dict[str, list[int]]] = {"cold": {}, "warm": {}}
            for i in range(2 * args.repeats):
                kind = "cold" if i < args.repeats else "warm"
                for name, addr, obj in tools:
                    host, port = addr.rsplit(":", 1)
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                    if kind == "warm":
                        assert get(conn, f"/data{i}.bin", "bytes=0-0") == data[:1]
                    before = len(state.gets(obj.format(i)))
                    t = time.perf_counter()
                    body = get(conn, f"/data{i}.bin", None)
                    full[kind].setdefault(name, []).append(time.perf_counter() - t)
                    conn.close()
                    assert body == data, f"{name}: full GET differs"
                    full_gets[kind].setdefault(name, []).append(len(state.gets(obj.format(i))) - before)
            for name, _, _ in tools:
                p50, p99, gets = results[name]
                print(f"{name:8} 64 KiB range p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   S3 GETs/range {gets:.2f}")
                for kind in ("cold", "warm"):
                    mibs = size / statistics.median(full[kind][name]) / 2**20
                    results[name].append(mibs)
                    print(f"{name:8} full GET {kind} {mibs:7.1f} MiB/s (median of {args.repeats}, S3 GETs each "
                          f"{' '.join(map(str, full_gets[kind][name]))})")  # fmt: skip
            qr, rr = results["qeltrix"], results["rclone"]
            per = {
                kind: " ".join(f"{r / q:.2f}" for q, r in zip(full[kind]["qeltrix"], full[kind]["rclone"], strict=True))
                for kind in ("cold", "warm")
            }
            print(f"ratios qeltrix/rclone: full GET cold {qr[3] / rr[3]:.2f}x (per copy {per['cold']}), "
                  f"warm {qr[4] / rr[4]:.2f}x (per copy {per['warm']})   p50 {rr[0] / qr[0]:.2f}x faster   "
                  f"p99 {rr[1] / qr[1]:.2f}x faster   GETs/range {qr[2]:.2f} vs {rr[2]:.2f}")  # fmt: skip
        finally:
            for p in (qs, rs):
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
