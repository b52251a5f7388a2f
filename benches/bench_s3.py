"""Qeltrix on object storage beside rclone crypt, on one moto S3 server, in one run.

Both tools store the same random file encrypted in the same bucket and serve it over HTTP:
``qeltrix serve s3://bench/q`` against ``rclone serve http`` of a crypt remote over an S3
remote. Every request to S3 goes through a counting proxy (tests/s3util.py), so GETs per
plaintext range are counted where they arrive. Printed: pack/upload throughput (``qeltrix
pack`` vs ``rclone rcat``), full GET throughput through each server, 64 KiB random range
latency p50/p99 and S3 GETs per range, and the qeltrix/rclone ratios.

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
        with (tmp / "data.bin").open("rb") as f:
            t_q = run(
                [*q, "pack", "-q", "--key-file", str(tmp / "k.key"), "-", f"s3://{BUCKET}/q/data.bin.qltx"], env, f
            )
        with (tmp / "data.bin").open("rb") as f:
            t_r = run(["rclone", "rcat", "cr:data.bin"], env, f)
        print(f"pack to S3 ({args.size_mib} MiB): qeltrix {size / t_q / 2**20:7.1f} MiB/s   "
              f"rclone rcat {size / t_r / 2**20:7.1f} MiB/s   ratio {t_r / t_q:.2f}x")  # fmt: skip

        qport, rport = free_port(), free_port()
        key_file = str(tmp / "k.key")
        qs = start([*q, "serve", "--port", str(qport), "--block-cache", "0", "--key-file", key_file, f"s3://{BUCKET}/q"],
                   env, qport)  # fmt: skip
        rs = start(["rclone", "serve", "http", "cr:", "--addr", f"127.0.0.1:{rport}", "--vfs-cache-mode", "off"],
                   env, rport)  # fmt: skip
        qaddr, raddr = f"127.0.0.1:{qport}", f"127.0.0.1:{rport}"
        try:
            results = {}
            for name, addr, obj in (("qeltrix", qaddr, "q/data.bin.qltx"), ("rclone", raddr, "r/data.bin.bin")):
                host, port = addr.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                rnd = random.Random(7)
                lat = []
                before = len(state.gets(obj))
                for _ in range(args.ranges):
                    off = rnd.randrange(0, size - RANGE)
                    t = time.perf_counter()
                    body = get(conn, "/data.bin", f"bytes={off}-{off + RANGE - 1}")
                    lat.append(time.perf_counter() - t)
                    assert body == data[off : off + RANGE], f"{name}: range differs"
                gets = (len(state.gets(obj)) - before) / args.ranges
                t = time.perf_counter()
                full = get(conn, "/data.bin", None)
                t_full = time.perf_counter() - t
                assert full == data, f"{name}: full GET differs"
                conn.close()
                lat.sort()
                p50 = statistics.median(lat) * 1e3
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
                results[name] = (size / t_full / 2**20, p50, p99, gets)
                print(f"{name:8} full GET {results[name][0]:7.1f} MiB/s   64 KiB range p50 {p50:6.2f} ms  "
                      f"p99 {p99:6.2f} ms   S3 GETs/range {gets:.2f}")  # fmt: skip
            qr, rr = results["qeltrix"], results["rclone"]
            print(f"ratios qeltrix/rclone: full GET {qr[0] / rr[0]:.2f}x   p50 {rr[1] / qr[1]:.2f}x faster   "
                  f"p99 {rr[2] / qr[2]:.2f}x faster   GETs/range {qr[3]:.2f} vs {rr[3]:.2f}")  # fmt: skip
        finally:
            for p in (qs, rs):
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
