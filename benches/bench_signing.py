"""What signing costs (docs/FORMAT.md section 15): pack, unpack and random reads, signed or not.

Runs the real CLI for pack/unpack (what users time) and the API for random reads, on the same
input, alternating signed and unsigned runs so that background load hits both alike, and
prints medians and ratios. Correctness is recorded too: every unpack is compared by SHA-256.

    python benches/bench_signing.py --size 1GiB --dir /dev/shm --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import qeltrix_v6
from qeltrix_v6 import _crypto, _signing
from qeltrix_v6.cli import parse_size

CPU: dict[str, list[float]] = {}


def timed(cmd: list[str], name: str = "") -> float:
    """Wall time of ``cmd``; its CPU time (user + system, all threads) goes to ``CPU[name]``.

    CPU time is the robust figure on a shared machine: other processes stretch wall time but
    not the work this one does.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(name, []).append(cpu)
    return wall


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB", type=parse_size)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--read-len", default="64KiB", type=parse_size)
    args = ap.parse_args()
    qeltrix = [sys.executable, "-m", "qeltrix_v6"]
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        src, key = os.path.join(d, "src.bin"), os.path.join(d, "k.key")
        sign = os.path.join(d, "me.sign")
        with open(src, "wb") as f:
            left = args.size
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        pem, pub = _crypto.ed25519_generate()
        with open(sign, "wb") as f:
            f.write(pem)
        signer = _signing.encode_signer(pub)
        want = sha256_file(src)
        results: dict[str, list[float]] = {k: [] for k in ("pack", "pack_signed", "unpack", "unpack_signer")}
        packs = [("pack", []), ("pack_signed", ["--sign-with", sign])]
        unpacks = [("unpack", "pack.qltx", []), ("unpack_signer", "pack_signed.qltx", ["--signer", signer])]
        for run_no in range(args.runs):
            order = 1 if run_no % 2 == 0 else -1  # alternate which variant goes first
            for name, extra in packs[::order]:
                out = os.path.join(d, f"{name}.qltx")
                if os.path.exists(out):
                    os.unlink(out)
                results[name].append(timed([*qeltrix, "pack", "-q", "--key-file", key, *extra, src, out], name))
            for name, box, extra in unpacks[::order]:
                # To /dev/null: the figure is the reader's work, not tmpfs page allocation.
                cmd = [*qeltrix, "unpack", "-q", "--key-file", key, *extra, os.path.join(d, box), os.devnull]
                results[name].append(timed(cmd, name))
        for name, box, extra in unpacks:  # correctness, once per variant
            out = os.path.join(d, "out.bin")
            subprocess.run(
                [*qeltrix, "unpack", "-q", "-f", "--key-file", key, *extra, os.path.join(d, box), out], check=True
            )
            assert sha256_file(out) == want, name
            os.unlink(out)
        gb = args.size / 1e9
        for name, ts in results.items():
            m, best = statistics.median(ts), min(ts)
            print(
                f"{name:<14} median {m:6.3f} s {gb / m:5.2f} GB/s; best {best:6.3f} s {gb / best:5.2f} GB/s; "
                f"runs {[round(t, 3) for t in ts]}"
            )
        med = {k: statistics.median(v) for k, v in results.items()}
        best_of = {k: min(v) for k, v in results.items()}
        for a, b in (("pack_signed", "pack"), ("unpack_signer", "unpack")):
            print(f"{a} / {b} time: median {med[a] / med[b]:.3f}, best {best_of[a] / best_of[b]:.3f}")
        cpu = {k: statistics.median(v) for k, v in CPU.items()}
        for a, b in (("pack_signed", "pack"), ("unpack_signer", "unpack")):
            print(
                f"CPU seconds (all threads), median: {a} {cpu[a]:.2f} / {b} {cpu[b]:.2f} = {cpu[a] / cpu[b]:.3f} "
                f"(+{(cpu[a] - cpu[b]) / gb:.2f} CPU s per GB)"
            )
        size_plain = os.path.getsize(os.path.join(d, "pack.qltx"))
        size_signed = os.path.getsize(os.path.join(d, "pack_signed.qltx"))
        print(f"container bytes: {size_plain:,} unsigned, {size_signed:,} signed (+{size_signed - size_plain:,})")

        rng = random.Random(1)
        with open(src, "rb") as f:
            data = f.read()
        offsets = [rng.randrange(0, args.size - args.read_len) for _ in range(args.reads)]
        with open(key, "rb") as f:
            kb = f.read()
        lat: dict[str, list[float]] = {"read": [], "read_signer": []}
        opens: dict[str, list[float]] = {"read": [], "read_signer": []}
        for _ in range(3):
            for name, box, signers in (
                ("read", "pack.qltx", None),
                ("read_signer", "pack_signed.qltx", [signer]),
            ):
                t0 = time.perf_counter()
                # cache_blocks=0 via a fresh file per read would measure opens; keep one open file
                # and read scattered ranges (the SeekServer's pattern), cache of 8 blocks.
                f2 = qeltrix_v6.open(os.path.join(d, box), key=kb, signers=signers)
                opens[name].append(time.perf_counter() - t0)
                with f2:
                    for off in offsets:
                        t = time.perf_counter()
                        f2.seek(off)
                        got = f2.read(args.read_len)
                        lat[name].append(time.perf_counter() - t)
                        assert got == data[off : off + args.read_len]
        for name, ts in lat.items():
            ts.sort()
            print(
                f"{name:<12} open median {statistics.median(opens[name]) * 1e3:6.2f} ms; "
                f"{args.read_len // 1024} KiB random read p50 {ts[len(ts) // 2] * 1e3:.3f} ms "
                f"p90 {ts[len(ts) * 9 // 10] * 1e3:.3f} ms"
            )
        p50 = {k: v[len(v) // 2] for k, v in lat.items()}
        print(f"random read p50 signer / no signer: {p50['read_signer'] / p50['read']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
