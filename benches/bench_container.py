#!/usr/bin/env python3
"""Qeltrix V6 container benchmark: throughput, memory and seek latency, side by side with
the single-core crypto limits (``openssl speed``) and with ``age``, as ratios.

    python benches/bench_container.py                  # 1 GiB, full run
    python benches/bench_container.py --quick          # 128 MiB smoke run
    python benches/bench_container.py --rss-size 4GiB  # also: peak RSS packing a 4 GiB stream
    python benches/bench_container.py --sweep-block-sizes
    python benches/bench_container.py --json results.json

Run it with a RELEASE build of qeltrix_v6 (see benches/README.md): an editable install
usually carries a debug build of the Rust core.

Every qeltrix measurement runs in a fresh child process (this script, re-invoked with a
hidden ``--child`` argument). The child times only the library call; the parent collects the
child's peak RSS and CPU time with ``wait4`` and watches it for stalls, so a pipeline that
deadlocks is reported as a hang instead of freezing the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY = bytes(range(32))  # benchmark key: public on purpose, never use it for real data
READ_LEN = 65536
SWEEP_BLOCK_SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20)
REPO = Path(__file__).resolve().parent.parent

# Targets (docs/DESIGN.md "Performance", benches/README.md).
TARGET_PACK_OVER_LIMIT = 0.75
TARGET_PACK_OVER_AGE = 1.3
TARGET_UNPACK_OVER_AGE = 2.0
TARGET_READ_P50_MS = 1.0
TARGET_RSS_MIB = 256
# The command line as users run it (issue 16): whole processes, start-up included.
TARGET_CLI_PACK_OVER_AGE = 1.0
TARGET_CLI_PACK_OVER_LIMIT = 0.8
TARGET_CLI_UNPACK_OVER_AGE = 1.5
TARGET_CLI_CAT_MS = 100.0

# A child with no CPU and no read/write progress for this long is considered hung.
STALL_SECONDS = 30.0


# --------------------------------------------------------------------------------------
# small helpers


_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"128M"``, ``"256k"``, ``"1000000"`` -> bytes (K/M/G and KiB/MiB/GiB are binary)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 128MiB, 256KiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % (scale // 16 or 1) == 0:
            v = n / scale
            return f"{v:g} {unit}"
    return f"{n} B"


def gbps(nbytes: int, seconds: float | None) -> float | None:
    return None if not seconds else nbytes / seconds / 1e9


def f3(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.3f}{unit}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def run_text(cmd: list[str], timeout: float = 120) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"<{e}>"
    return (r.stdout + r.stderr).strip()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# child side: one measurement per process


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return ru.ru_utime + ru.ru_stime


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import qeltrix_v6  # noqa: F401 - imported before the baseline RSS is taken

    rss_before = _vm_kib("self", "VmRSS")
    cpu0 = _cpu_seconds()
    res = _child_op(spec)
    res["cpu_seconds"] = _cpu_seconds() - cpu0
    res["rss_before_kib"] = rss_before
    res["peak_rss_kib"] = _vm_kib("self", "VmHWM")
    return res


def _child_dst(dst: str) -> Any:
    """``devnull-fd``: an ``int`` descriptor (the Rust core writes it with the GIL released);
    ``devnull-fileobj``: a Python file object (written through ``write`` with the GIL held);
    anything else: a path (written atomically: temporary file, fsync, rename).

    /dev/null is never passed as a path: builds before commit 4bfb198 renamed their temporary
    file over it, turning /dev/null into a regular file for the whole machine.
    """
    if dst == "devnull-fd":
        return os.open(os.devnull, os.O_WRONLY)
    if dst == "devnull-fileobj":
        return open(os.devnull, "wb")  # closed by _close_dst
    return dst


def _close_dst(dst: Any) -> None:
    if isinstance(dst, int):
        os.close(dst)
    elif not isinstance(dst, str):
        dst.close()


def devnull_ok() -> bool:
    try:
        return stat.S_ISCHR(os.stat(os.devnull).st_mode)
    except OSError:
        return False


DEVNULL_BROKEN = (
    "/dev/null is not a character device (something renamed a regular file over it). Restore it with\n"
    "    mknod -m 666 /dev/null.new c 1 3 && mv -f /dev/null.new /dev/null\n"
    "and run again: writes 'to /dev/null' would otherwise land in RAM and the figures would be wrong."
)


def _child_op(spec: dict[str, Any]) -> dict[str, Any]:
    import qeltrix_v6

    op = spec["op"]
    if op == "pack":
        dst = _child_dst(spec["dst"])
        t0 = time.perf_counter()
        r = qeltrix_v6.pack(
            spec["src"],
            dst,
            key=KEY,
            block_size=spec["block_size"],
            workers=spec["workers"],
            permute=spec.get("permute", True),
        )
        dt = time.perf_counter() - t0
        _close_dst(dst)
        return {"seconds": dt, "pt_len": r.pt_len, "block_count": r.block_count, "container_len": r.container_len}
    if op == "unpack":
        dst = _child_dst(spec["dst"])
        t0 = time.perf_counter()
        n = qeltrix_v6.unpack(spec["src"], dst, key=KEY, workers=spec["workers"])
        dt = time.perf_counter() - t0
        _close_dst(dst)
        return {"seconds": dt, "pt_len": n}
    if op == "reads":
        rng = random.Random(spec["seed"])
        t0 = time.perf_counter()
        f = qeltrix_v6.open(spec["container"], "rb", key=KEY)
        open_s = time.perf_counter() - t0
        size = f.size
        ref = os.open(spec["input"], os.O_RDONLY)
        times, bad = [], 0
        for _ in range(spec["count"]):
            off = rng.randrange(0, max(1, size - READ_LEN))
            t0 = time.perf_counter()
            f.seek(off)
            data = f.read(READ_LEN)
            times.append(time.perf_counter() - t0)
            if data != os.pread(ref, READ_LEN, off):
                bad += 1
        os.close(ref)
        f.close()
        return {"open_seconds": open_s, "times": times, "mismatches": bad}
    raise SystemExit(f"unknown child op {op!r}")


# --------------------------------------------------------------------------------------
# parent side: run children, watch them, collect rusage


@dataclass
class ChildRun:
    ok: bool
    hung: bool = False
    result: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0  # parent-side wall time of the whole child, startup included
    maxrss_kib: int = 0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    others_cores: float = 0.0
    error: str = ""


def _proc_progress(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, bytes read + written) so far by ``pid`` (Linux), for stall detection."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return cpu, int(io["rchar"]) + int(io["wchar"])
    except (OSError, ValueError, IndexError, KeyError):
        return None


def _thread_states(pid: int) -> str:
    out = []
    for t in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            wchan = (t / "wchan").read_text().strip() or "-"
            st = (t / "stat").read_text().rsplit(")", 1)[1].split()
            out.append(f"{t.name}:{st[0]}:{wchan}")
        except OSError:
            pass
    return " ".join(out)


def _vm_kib(pid: int | str, name: str) -> int | None:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of a live process, in KiB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# Shared machines: before each measurement wait (up to IDLE["wait"] seconds) until the other
# processes use less than IDLE["threshold"] of one core, and record what they used during it.
IDLE = {"wait": 60.0, "threshold": 0.2}


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    total = sum(f[:8])
    return total - idle, total


def _user_ticks() -> int:
    """user + nice jiffies over all CPUs: what other programs burn (kernel write-back excluded)."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return int(f[0]) + int(f[1])
    except (OSError, ValueError, IndexError):
        return 0


def machine_busy(interval: float = 0.5) -> float:
    """Cores' worth of CPU used by every process during ``interval`` seconds."""
    b0, _ = _busy_ticks()
    time.sleep(interval)
    b1, _ = _busy_ticks()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / interval


def wait_idle() -> float:
    """Wait until the machine is quiet (see IDLE); returns the last busy reading, in cores."""
    deadline = time.monotonic() + IDLE["wait"]
    busy = machine_busy()
    warned = False
    while busy > IDLE["threshold"] and time.monotonic() < deadline:
        if not warned:
            log(f"    (machine busy: other processes use {busy:.2f} cores; waiting up to {IDLE['wait']:.0f} s)")
            warned = True
        time.sleep(1.5)
        busy = machine_busy()
    return busy


def run_proc(cmd: list[str], timeout: float, stdin: Any = None) -> tuple[ChildRun, str, str]:
    """Run ``cmd``, watching it: kill it if it stalls or times out.

    Peak RSS is the process's own ``VmHWM``, polled while it runs: ``ru_maxrss`` from
    ``wait4`` would also count the memory of this (forked) parent before ``exec``.
    ``others_cores`` is the user-mode CPU that every other process used meanwhile (noise; the
    kernel's own write-back threads are not counted, they work for the measured process).
    """
    os.sync()  # write-back left over by the previous run must not slow this one down
    wait_idle()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        user0 = _user_ticks()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err)
        # Readable the moment the child exits: the wall time ends then, not at the next poll
        # (sleeping 20 ms between polls added 0-20 ms, ~10 on average, to every figure).
        exited = os.pidfd_open(proc.pid)
        deadline = t0 + timeout
        # stall window: a deadlocked pipeline still wakes up to poll (a few ms of CPU a second)
        # but reads and writes nothing
        win_start, win_progress = time.monotonic(), _proc_progress(proc.pid)
        hung, why, hwm = False, "", 0
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                end = time.perf_counter()
                break
            hwm = max(hwm, _vm_kib(proc.pid, "VmHWM") or 0)
            now, stalled = time.monotonic(), False
            if now - win_start >= STALL_SECONDS:
                p = _proc_progress(proc.pid)
                if p is not None and win_progress is not None:
                    stalled = p[1] == win_progress[1] and p[0] - win_progress[0] < 0.02 * STALL_SECONDS
                win_start, win_progress = now, p
            if stalled or time.perf_counter() > deadline:
                hung = True
                why = (
                    f"no I/O and under 2% of a core for {STALL_SECONDS:.0f} s"
                    if stalled
                    else f"timeout after {timeout:.0f} s"
                ) + f"; threads (tid:state:wchan) {_thread_states(proc.pid)}"
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                end = time.perf_counter()
                break
            if select.select([exited], [], [], 0.02)[0]:
                # Exited: stop the clock now and reap it.
                pid, status, rusage = os.wait4(proc.pid, 0)
                end = time.perf_counter()
                break
        os.close(exited)
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
        wall = end - t0
        user = (_user_ticks() - user0) / os.sysconf("SC_CLK_TCK")
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    run = ChildRun(ok=False, hung=hung, wall=wall, maxrss_kib=hwm, cpu_user=rusage.ru_utime, cpu_sys=rusage.ru_stime)
    run.others_cores = max(0.0, user - run.cpu_user) / wall if wall else 0.0
    if hung:
        run.error = why
    elif proc.returncode != 0:
        run.error = f"exit {proc.returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"
    else:
        run.ok = True
    return run, stdout, stderr


def run_child(spec: dict[str, Any], timeout: float, stdin: Any = None) -> ChildRun:
    """Run one qeltrix measurement in a fresh interpreter (see ``_child``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    run, stdout, stderr = run_proc(cmd, timeout, stdin)
    if not devnull_ok():
        raise SystemExit(f"after {spec['op']} -> {spec.get('dst')}: {DEVNULL_BROKEN}")
    if run.ok:
        try:
            run.result = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            run.ok = False
            run.error = f"unparsable child output: {stdout[-200:]!r} {stderr[-300:]!r}"
            return run
        # The child's own figures are exact: VmHWM read at the end, CPU of the timed call only.
        run.maxrss_kib = run.result.get("peak_rss_kib") or run.maxrss_kib
    return run


@dataclass
class Measure:
    """Repeated runs of one throughput measurement."""

    name: str
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    cpu_util: list[float] = field(default_factory=list)  # (user + sys) / wall, of the child
    others: list[float] = field(default_factory=list)  # cores used by other processes meanwhile
    hangs: int = 0
    noisy: bool = False  # no quiet run could be had: the figure is from a disturbed run
    errors: list[str] = field(default_factory=list)

    @property
    def best(self) -> float | None:
        return gbps(self.nbytes, min(self.seconds)) if self.seconds else None

    @property
    def median(self) -> float | None:
        return gbps(self.nbytes, statistics.median(self.seconds)) if self.seconds else None

    @property
    def peak_rss_mib(self) -> float | None:
        return max(self.rss_mib) if self.rss_mib else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "bytes": self.nbytes, "seconds": self.seconds, "best_gbps": self.best,
            "median_gbps": self.median, "peak_rss_mib": self.peak_rss_mib, "cpu_util": self.cpu_util,
            "others_cores": self.others, "noisy": self.noisy, "hangs": self.hangs, "errors": self.errors,
        }  # fmt: skip


def _collect(m: Measure, cfg: Config, attempt: Any, max_noise: float | None = None) -> Measure:
    """Call ``attempt()`` until ``cfg.repeats`` usable runs.

    ``attempt`` returns ``(run, seconds, cpu_seconds, detail)``. A hung run is retried (up to
    ``cfg.max_hangs``); a run during which other processes used more than ``max_noise`` cores
    is retried up to ``cfg.noise_retries`` times, and kept only if no quiet run was obtained.
    """
    max_noise = cfg.max_noise if max_noise is None else max_noise
    noisy: list[tuple[float, float, float, float]] = []
    noisy_tries = 0
    while len(m.seconds) < cfg.repeats:
        run, secs, cpu, detail = attempt()
        if run.hung:
            m.hangs += 1
            m.errors.append(run.error)
            log(f"  {m.name}: HANG ({run.error})")
            if m.hangs > cfg.max_hangs:
                break
            continue
        if not run.ok:
            m.errors.append(run.error)
            log(f"  {m.name}: ERROR {run.error}")
            break
        sample = (secs, run.maxrss_kib / 1024, cpu / secs if secs else 0.0, run.others_cores)
        log(
            f"  {m.name}: {f3(gbps(m.nbytes, secs))} GB/s  ({secs:.3f} s, CPU {cpu:.2f} s{detail}; "
            f"other processes {run.others_cores:.2f} cores)"
        )
        if run.others_cores > max_noise and noisy_tries < cfg.noise_retries:
            noisy_tries += 1
            noisy.append(sample)
            log(f"    noisy run (other processes > {max_noise:g} cores): not kept, retrying")
            continue
        if run.others_cores > max_noise:
            m.noisy = True  # out of retries: keep it, flagged
        for lst, v in zip((m.seconds, m.rss_mib, m.cpu_util, m.others), sample, strict=True):
            lst.append(v)
    if not m.seconds and noisy:
        secs, rss, util, others = min(noisy)
        m.seconds, m.rss_mib, m.cpu_util, m.others = [secs], [rss], [util], [others]
        m.noisy = True
    return m


def measure_child(
    name: str, nbytes: int, spec: dict[str, Any], cfg: Config, stdin_factory: Any = None, max_noise: float | None = None
) -> Measure:
    """A qeltrix measurement: ``spec`` run in a fresh child, best of ``cfg.repeats``."""

    dst = spec.get("dst", "")
    fresh = None if dst.startswith("devnull-") else Path(dst)

    def attempt() -> tuple[ChildRun, float, float, str]:
        if fresh is not None:
            fresh.unlink(missing_ok=True)  # every run writes a new file (see measure_cmd)
        stdin, cleanup = stdin_factory() if stdin_factory else (None, lambda: None)
        try:
            run = run_child(spec, timeout=cfg.timeout_for(nbytes), stdin=stdin)
        finally:
            cleanup()
        if not run.ok:
            return run, 0.0, 0.0, ""
        r = run.result
        detail = f", peak RSS {run.maxrss_kib / 1024:.0f} MiB ({r['rss_before_kib'] / 1024:.0f} before the call)"
        return run, r["seconds"], r["cpu_seconds"], detail

    return _collect(Measure(name, nbytes), cfg, attempt, max_noise)


def measure_cmd(name: str, nbytes: int, cmd: list[str], cfg: Config, fresh: Path | None = None) -> Measure:
    """An external command (``age``), timed from outside, best of ``cfg.repeats``.

    ``fresh``: the output file, deleted (untimed) before each run. Overwriting a file first
    frees its old blocks, which on this ext4 (mounted with ``discard``) costs as much again as
    writing, and would penalise every run but the first.
    """

    def attempt() -> tuple[ChildRun, float, float, str]:
        if fresh is not None:
            fresh.unlink(missing_ok=True)
        run, _, _ = run_proc(cmd, timeout=cfg.timeout_for(nbytes))
        return run, run.wall, run.cpu_user + run.cpu_sys, ""

    return _collect(Measure(name, nbytes), cfg, attempt)


# --------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    size: int
    block_size: int
    workers: int | None
    repeats: int
    reads: int
    proc_reads: int
    openssl_seconds: int
    max_hangs: int
    tmpdir: str
    rss_size: int | None
    skip_age: bool
    timeout_floor: float
    build_commit: str | None
    wait_idle: float
    idle_threshold: float
    max_noise: float
    noise_retries: int

    def timeout_for(self, nbytes: int) -> float:
        # generous: 30 s + 20 MB/s; a deadlock is caught sooner by the stall detector
        return self.timeout_floor + nbytes / 20e6


# --------------------------------------------------------------------------------------
# phases


def environment(build_commit: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {}
    env["repo_head"] = run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    env["worktree_dirty"] = bool(run_text(["git", "-C", str(REPO), "status", "--porcelain", "--", "rust", "python"]))
    try:
        import qeltrix_v6
        from qeltrix_v6 import _core

        env["qeltrix_v6"] = f"{qeltrix_v6.__version__} from {Path(qeltrix_v6.__file__).parent}"
        env["qeltrix_core"] = str(_core.__file__)
        env["editable_install"] = str(REPO / "python") in str(Path(qeltrix_v6.__file__).resolve())
        env["default_block_size"] = qeltrix_v6.DEFAULT_BLOCK_SIZE
        if build_commit:
            env["commit"] = build_commit
        elif env["editable_install"]:
            env["commit"] = env["repo_head"] + (" + uncommitted changes" if env["worktree_dirty"] else "")
        else:
            env["commit"] = f"unknown (installed wheel; repo HEAD is {env['repo_head']}; pass --build-commit)"
    except Exception as e:  # report it; the run fails later anyway
        env["qeltrix_v6"] = f"import failed: {e}"
    try:
        import cryptography

        env["cryptography"] = cryptography.__version__
    except ImportError:
        env["cryptography"] = "missing"
    env["python"] = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    env["openssl"] = run_text(["openssl", "version"])
    env["age"] = run_text(["age", "--version"]) if shutil.which("age") else "missing"
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
        cpu += (
            " [" + " ".join(f for f in ("aes", "vaes", "vpclmulqdq", "sha_ni", "avx2", "avx512f") if f in flags) + "]"
        )
    except (OSError, StopIteration):
        pass
    env["cpu"] = cpu or platform.processor()
    env["cores"] = os.cpu_count()
    env["kernel"] = platform.release()
    env["loadavg_start"] = os.getloadavg()
    return env


def openssl_limits(cfg: Config) -> dict[str, Any]:
    """Single-core ``openssl speed`` at 16384-byte blocks, in GB/s (1e9 bytes/s)."""

    def speed(alg: str) -> float | None:
        text = run_text(["openssl", "speed", "-mr", "-seconds", str(cfg.openssl_seconds), "-evp", alg], timeout=600)
        sizes = None
        for line in text.splitlines():
            if line.startswith("+H:"):
                sizes = [int(x) for x in line.split(":")[1:]]
            elif line.startswith("+F:") and sizes:
                values = [float(x) for x in line.split(":")[3:]]
                return values[sizes.index(16384)] / 1e9
        log(f"  openssl speed {alg}: could not parse output: {text[-300:]}")
        return None

    log("openssl speed (single core, 16384-byte blocks) ...")
    wait_idle()
    aes = speed("aes-256-gcm")
    wait_idle()
    sha = speed("sha256")
    cores = os.cpu_count() or 1
    per_core = 1 / (1 / aes + 1 / sha) if aes and sha else None
    limit = per_core * cores if per_core else None
    log(
        f"  AES-256-GCM {f3(aes)} GB/s, SHA-256 {f3(sha)} GB/s, "
        f"SHA+AES {f3(per_core)} GB/s/core, x{cores} = {f3(limit)}"
    )
    return {"aes_256_gcm_gbps": aes, "sha256_gbps": sha, "sha_aes_per_core_gbps": per_core, "cores": cores,
            "limit_gbps": limit}  # fmt: skip


def make_input(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their SHA-256."""
    h = hashlib.sha256()
    chunk = 8 << 20
    with open(path, "wb", buffering=0) as f:
        left = size
        while left:
            b = os.urandom(min(chunk, left))
            f.write(b)
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def disk_ceiling(src: Path, dst: Path, size: int) -> float | None:
    """Copy ``src`` (page cache) to ``dst``, then fsync: a reference for durable file->file runs.

    Not a strict ceiling: a pipeline that writes while it computes lets write-back start early,
    so less is left for its final fsync.
    """
    buf = bytearray(8 << 20)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(buf):
            fo.write(memoryview(buf)[:n])
        os.fsync(fo.fileno())
    dt = time.perf_counter() - t0
    dst.unlink()
    return gbps(size, dt)


def random_reads(container: Path, inp: Path, cfg: Config, count: int) -> dict[str, Any]:
    spec = {"op": "reads", "container": str(container), "input": str(inp), "count": count, "seed": 6}
    run = run_child(spec, timeout=cfg.timeout_floor + count * 0.5)
    if not run.ok:
        log(f"  random reads: {'HANG' if run.hung else 'ERROR'} {run.error}")
        return {"error": run.error}
    t = sorted(x * 1e3 for x in run.result["times"])
    res = {
        "count": len(t), "p50_ms": percentile(t, 50), "p99_ms": percentile(t, 99), "mean_ms": statistics.mean(t),
        "max_ms": t[-1], "open_ms": run.result["open_seconds"] * 1e3, "mismatches": run.result["mismatches"],
    }  # fmt: skip
    log(
        f"  in-process 64 KiB reads x{len(t)}: p50 {res['p50_ms']:.3f} ms, p99 {res['p99_ms']:.3f} ms, "
        f"open {res['open_ms']:.2f} ms, mismatches {res['mismatches']}"
    )
    return res


def _timed_fresh_reads(
    read_cmd: Callable[[int], list[str]], inp: Path, cfg: Config, size: int, seed: int, baseline: str
) -> tuple[list[float], int, float]:
    """Run ``read_cmd(offset)`` (a whole process writing the 64 KiB at ``offset`` to stdout)
    ``cfg.proc_reads`` times at random offsets, timed from outside, and ``python -c baseline``
    for the interpreter's share: (sorted times in ms, mismatches, baseline p50 in ms)."""
    rng = random.Random(seed)
    times, bad = [], 0
    with open(inp, "rb", buffering=0) as ref:
        for _ in range(cfg.proc_reads):
            off = rng.randrange(0, max(1, size - READ_LEN))
            t0 = time.perf_counter()
            r = subprocess.run(read_cmd(off), capture_output=True, check=False)
            times.append((time.perf_counter() - t0) * 1e3)
            if r.returncode != 0 or r.stdout != os.pread(ref.fileno(), READ_LEN, off):
                bad += 1
    base = []
    for _ in range(max(3, cfg.proc_reads // 2)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", baseline], check=True)
        base.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times, bad, statistics.median(base)


def fresh_process_reads(container: Path, inp: Path, cfg: Config, size: int) -> dict[str, Any]:
    """One ``python -c ... seek_extract`` per read: what a CLI or CGI-style caller pays."""
    code = (
        "import sys, qeltrix_v6\n"
        "sys.stdout.buffer.write(qeltrix_v6.seek_extract(sys.argv[1], int(sys.argv[2]), "
        f"{READ_LEN}, key=bytes.fromhex(sys.argv[3])))"
    )
    times, bad, base = _timed_fresh_reads(
        lambda off: [sys.executable, "-c", code, str(container), str(off), KEY.hex()], inp, cfg, size, 7,
        "import qeltrix_v6",
    )  # fmt: skip
    res = {"count": len(times), "p50_ms": percentile(times, 50), "max_ms": times[-1],
           "import_only_p50_ms": base, "mismatches": bad}  # fmt: skip
    log(
        f"  fresh process per read x{len(times)}: p50 {res['p50_ms']:.1f} ms "
        f"(python + import qeltrix_v6 alone: {res['import_only_p50_ms']:.1f} ms), mismatches {bad}"
    )
    return res


def qeltrix_cmd() -> list[str]:
    """The ``qeltrix`` console script of the interpreter running this benchmark (else ``-m``)."""
    script = Path(sys.executable).parent / "qeltrix"
    return [str(script)] if script.exists() else [sys.executable, "-m", "qeltrix_v6"]


def api_cmd(op: str, src: Path) -> list[str]:
    """``qeltrix_v6.pack`` or ``unpack`` of ``src`` into /dev/null as a whole ``python -c`` process."""
    code = (
        "import os, sys, qeltrix_v6\n"
        f"qeltrix_v6.{op}(sys.argv[1], os.open(os.devnull, os.O_WRONLY), key=bytes(range(32)))"
    )
    assert bytes(range(32)) == KEY
    return [sys.executable, "-c", code, str(src)]


def cli_cat_reads(container: Path, inp: Path, key_file: Path, cfg: Config, size: int) -> dict[str, Any]:
    """``qeltrix cat --offset X --length 64KiB`` from a fresh process, timed from outside."""
    cat = [*qeltrix_cmd(), "cat", "--key-file", str(key_file), str(container)]
    times, bad, base = _timed_fresh_reads(
        lambda off: [*cat, "--offset", str(off), "--length", str(READ_LEN)], inp, cfg, size, 8, "pass"
    )
    res = {"count": len(times), "p50_ms": percentile(times, 50), "max_ms": times[-1],
           "python_pass_p50_ms": base, "mismatches": bad}  # fmt: skip
    log(
        f"  qeltrix cat 64 KiB, fresh process x{len(times)}: p50 {res['p50_ms']:.1f} ms "
        f"(python -c pass: {res['python_pass_p50_ms']:.1f} ms), mismatches {bad}"
    )
    return res


def ensure_age() -> bool:
    if shutil.which("age") and shutil.which("age-keygen"):
        return True
    log("age not found: installing the Debian package 'age' (apt-get update && apt-get install -y age) ...")
    if shutil.which("apt-get") is None:
        return False
    subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "age"], check=False, stdout=subprocess.DEVNULL)
    return bool(shutil.which("age") and shutil.which("age-keygen"))


def age_bench(work: Path, inp: Path, size: int, in_sha: str, cfg: Config) -> dict[str, Any]:
    if cfg.skip_age:
        return {"skipped": True}
    if not ensure_age():
        log("  age unavailable: skipped")
        return {"error": "age not installed"}
    key = work / "age-key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = run_text(["age-keygen", "-y", str(key)]).split()[0]
    enc_file, dec_file = work / "age.out.age", work / "age.out.dec"
    res: dict[str, Any] = {"version": run_text(["age", "--version"])}
    log("age (X25519 recipient) ...")
    enc = ["age", "-r", recipient, "-o"]
    dec = ["age", "-d", "-i", str(key), "-o"]
    # `sync FILE` fsyncs FILE: the same durability as qeltrix's atomic output (fsync, rename)
    synced = ["sh", "-c", 'out=$1; shift; "$@" && sync "$out"', "sh"]
    res["encrypt_file"] = measure_cmd(
        "age encrypt file->file", size, [*enc, str(enc_file), str(inp)], cfg, fresh=enc_file
    )
    res["encrypt_file_fsync"] = measure_cmd(
        "age encrypt file->file + fsync", size, [*synced, str(enc_file), *enc, str(enc_file), str(inp)], cfg, enc_file
    )
    res["encrypt_null"] = measure_cmd("age encrypt ->/dev/null", size, [*enc, os.devnull, str(inp)], cfg)
    res["decrypt_file"] = measure_cmd(
        "age decrypt file->file", size, [*dec, str(dec_file), str(enc_file)], cfg, fresh=dec_file
    )
    res["decrypt_ok"] = dec_file.exists() and sha256_file(dec_file) == in_sha
    res["decrypt_file_fsync"] = measure_cmd(
        "age decrypt file->file + fsync",
        size,
        [*synced, str(dec_file), *dec, str(dec_file), str(enc_file)],
        cfg,
        dec_file,
    )
    dec_file.unlink(missing_ok=True)
    res["decrypt_null"] = measure_cmd("age decrypt ->/dev/null", size, [*dec, os.devnull, str(enc_file)], cfg)
    enc_file.unlink(missing_ok=True)
    os.sync()
    return res


def rss_stream(cfg: Config, size: int) -> dict[str, Any]:
    """Peak RSS of packing ``size`` bytes that arrive on a pipe (never on disk)."""

    def pipe() -> tuple[Any, Any]:
        # openssl's AES-CTR keystream over /dev/zero: pseudo-random and much faster than /dev/urandom
        gen = subprocess.Popen(
            ["openssl", "enc", "-aes-256-ctr", "-nosalt", "-pbkdf2", "-pass", "pass:qeltrix-bench", "-in", "/dev/zero"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        head = subprocess.Popen(["head", "-c", str(size)], stdin=gen.stdout, stdout=subprocess.PIPE)
        assert gen.stdout is not None
        gen.stdout.close()

        def cleanup() -> None:
            if head.stdout:
                head.stdout.close()
            head.wait()
            gen.kill()
            gen.wait()

        return head.stdout, cleanup

    log(f"peak RSS packing a {fmt_size(size)} stream from a pipe ...")
    spec = {
        "op": "pack",
        "src": "/dev/stdin",
        "dst": "devnull-fd",
        "block_size": cfg.block_size,
        "workers": cfg.workers,
    }
    one = Config(**{**cfg.__dict__, "repeats": 1})
    # the generator (openssl, head) runs beside the child: its CPU is not noise here
    m = measure_child(f"pack {fmt_size(size)} pipe->/dev/null", size, spec, one, stdin_factory=pipe, max_noise=1e9)
    return {"size": size, "measure": m}


# --------------------------------------------------------------------------------------
# report


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def print_main_report(res: dict[str, Any]) -> None:
    env, lim, rows = res["env"], res["limits"], res["rows"]
    print()
    print(f"Qeltrix V6 benchmark — build {env.get('commit')}")
    print(
        f"  {env['cpu']}, {env['cores']} cores; {env['python']}; cryptography {env['cryptography']}; {env['openssl']}"
    )
    print(f"  qeltrix_v6 {env.get('qeltrix_v6')}")
    if env.get("editable_install"):
        print("  WARNING: editable install (usually a debug build): numbers are not representative")
    print(
        f"  input {fmt_size(res['size'])} random bytes in {res['tmpdir']}; block size {fmt_size(res['block_size'])}; "
        f"workers {res['workers'] or 'default'}; best of {res['repeats']}; load average at start "
        f"{env['loadavg_start'][0]:.2f}, at end {res['loadavg_end'][0]:.2f}"
    )
    print()
    print(f"{'measurement':44} {'best GB/s':>10} {'median':>8} {'peak RSS':>9} {'CPU':>6} {'noise':>6} {'hangs':>6}")
    print("-" * 95)
    print(f"{'openssl AES-256-GCM, 1 core (16 KiB)':44} {f3(lim['aes_256_gcm_gbps']):>10}")
    print(f"{'openssl SHA-256, 1 core (16 KiB)':44} {f3(lim['sha256_gbps']):>10}")
    print(f"{'SHA-256 + AES-GCM, 1 core':44} {f3(lim['sha_aes_per_core_gbps']):>10}")
    print(f"{'LIMIT: SHA-256 + AES-GCM, {} cores'.format(lim['cores']):44} {f3(lim['limit_gbps']):>10}")
    if res.get("disk_gbps") is not None:
        print(f"{'disk: copy + fsync (reference)':44} {f3(res['disk_gbps']):>10}")
    for m in rows:
        if isinstance(m, Measure):
            rss = f"{m.peak_rss_mib:.0f} MiB" if m.peak_rss_mib is not None else ""
            i = m.seconds.index(min(m.seconds)) if m.seconds else None
            cpu = f"{m.cpu_util[i]:.2f}" if i is not None else ""
            noise = f"{m.others[i]:.2f}{'*' if m.noisy else ''}" if i is not None and m.others else ""
            print(f"{m.name:44} {f3(m.best):>10} {f3(m.median):>8} {rss:>9} {cpu:>6} {noise:>6} {m.hangs or '':>6}")
    print("-" * 95)
    print("CPU: cores used by the measured process during its best run; noise: cores used meanwhile by other")
    print("processes (user time); * = no quiet run could be had, the figure is from a disturbed run")
    rr, pr = res.get("reads", {}), res.get("proc_reads", {})
    if "p50_ms" in rr:
        print(
            f"64 KiB random reads, in-process (x{rr['count']}):  "
            f"p50 {rr['p50_ms']:.3f} ms   p99 {rr['p99_ms']:.3f} ms   "
            f"max {rr['max_ms']:.3f} ms   (open {rr['open_ms']:.2f} ms)"
        )
    if "p50_ms" in pr:
        print(
            f"64 KiB random reads, fresh process (x{pr['count']}): p50 {pr['p50_ms']:.1f} ms "
            f"(interpreter + import alone: {pr['import_only_p50_ms']:.1f} ms)"
        )
    cc = res.get("cli_cat", {})
    if "p50_ms" in cc:
        print(
            f"qeltrix cat 64 KiB, fresh process (x{cc['count']}): p50 {cc['p50_ms']:.1f} ms "
            f"(python -c pass alone: {cc['python_pass_p50_ms']:.1f} ms)"
        )
    print(f"correctness: unpack SHA-256 {verdict(res['checks'].get('unpack_sha256'))}, "
          f"random reads {verdict(res['checks'].get('reads'))}, "
          f"fresh-process reads {verdict(res['checks'].get('proc_reads'))}, "
          f"CLI cat {verdict(res['checks'].get('cli_cat'))}, "
          f"age round trip {verdict(res['checks'].get('age'))}")  # fmt: skip
    print()
    print("ratios and targets")
    print(f"{'':52} {'ratio':>7} {'target':>8} {'':>5}")
    for name, value, target, ok in res["targets"]:
        t = target if isinstance(target, str) else f">= {target}"
        print(f"{name:52} {f3(value):>7} {t:>8} {verdict(ok):>5}")
    if res.get("hang_note"):
        print()
        print(res["hang_note"])


def ensure_bytecode() -> bool:
    """Compile the installed ``qeltrix_v6`` package's modules to bytecode, as ``pip install``
    of the wheel does. An editable install run with ``PYTHONDONTWRITEBYTECODE=1`` (set on the
    development machines) would otherwise compile every module from source in every fresh
    process: about a quarter of a ``qeltrix cat``, which no installed copy ever pays. True when
    every module has its bytecode."""
    import compileall

    import qeltrix_v6

    return bool(compileall.compile_dir(str(Path(qeltrix_v6.__file__).parent), quiet=1))


def main_run(cfg: Config, json_path: str | None) -> dict[str, Any]:
    env = environment(cfg.build_commit)
    log(f"build {env.get('commit')}, qeltrix_v6 {env.get('qeltrix_v6')}")
    if env.get("editable_install"):
        log("WARNING: qeltrix_v6 is an editable install (probably a debug build); see benches/README.md")
    env["bytecode_compiled"] = ensure_bytecode()
    if not env["bytecode_compiled"]:
        log("WARNING: could not compile qeltrix_v6 to bytecode: fresh-process figures include compiling it")
    size = cfg.size
    work = Path(tempfile.mkdtemp(prefix="qeltrix-bench-", dir=cfg.tmpdir))
    res: dict[str, Any] = {"env": env, "size": size, "block_size": cfg.block_size, "workers": cfg.workers,
                           "repeats": cfg.repeats, "tmpdir": str(work), "checks": {}}  # fmt: skip
    try:
        res["limits"] = openssl_limits(cfg)
        inp, cont, out = work / "input.bin", work / "input.qltx", work / "output.bin"
        log(f"writing {fmt_size(size)} of random data to {inp} ...")
        in_sha = make_input(inp, size)
        os.sync()
        res["disk_gbps"] = disk_ceiling(inp, work / "copy.bin", size)
        log(f"  disk copy + fsync: {f3(res['disk_gbps'])} GB/s")
        os.sync()

        common = {"block_size": cfg.block_size, "workers": cfg.workers}
        log("qeltrix pack / unpack ...")
        rows: list[Measure] = []
        rows.append(
            measure_child(
                "qeltrix pack file->file", size, {"op": "pack", "src": str(inp), "dst": str(cont), **common}, cfg
            )
        )
        rows.append(
            measure_child(
                "qeltrix pack file->/dev/null (fd)",
                size,
                {"op": "pack", "src": str(inp), "dst": "devnull-fd", **common},
                cfg,
            )
        )
        rows.append(
            measure_child(
                "qeltrix pack file->/dev/null (file object)",
                size,
                {"op": "pack", "src": str(inp), "dst": "devnull-fileobj", **common},
                cfg,
            )
        )
        key_file = work / "bench.key"
        key_file.write_bytes(KEY)
        cli = qeltrix_cmd()
        # The CLI as users run it: default settings, whole process (start-up included), timed
        # from outside like age.
        rows.append(
            measure_cmd(
                "qeltrix pack (CLI) ->/dev/null",
                size,
                [*cli, "pack", "--key-file", str(key_file), str(inp), os.devnull],
                cfg,
            )
        )
        # The same through the API in a whole process of its own (start-up included, like the CLI).
        rows.append(measure_cmd("qeltrix_v6.pack() whole process ->/dev/null", size, api_cmd("pack", inp), cfg))
        if not cont.exists():  # every pack hung: one more try without the clock
            run_child({"op": "pack", "src": str(inp), "dst": str(cont), **common}, timeout=cfg.timeout_for(size) * 3)
        have_container = cont.exists()
        w = {"workers": cfg.workers}
        if have_container:
            rows.append(
                measure_child(
                    "qeltrix unpack file->file", size, {"op": "unpack", "src": str(cont), "dst": str(out), **w}, cfg
                )
            )
            res["checks"]["unpack_sha256"] = out.exists() and sha256_file(out) == in_sha
            out.unlink(missing_ok=True)
            os.sync()
            rows.append(
                measure_child(
                    "qeltrix unpack file->/dev/null (fd)",
                    size,
                    {"op": "unpack", "src": str(cont), "dst": "devnull-fd", **w},
                    cfg,
                )
            )
            rows.append(
                measure_child(
                    "qeltrix unpack file->/dev/null (file object)",
                    size,
                    {"op": "unpack", "src": str(cont), "dst": "devnull-fileobj", **w},
                    cfg,
                )
            )
            rows.append(
                measure_cmd(
                    "qeltrix unpack (CLI) ->/dev/null",
                    size,
                    [*cli, "unpack", "--key-file", str(key_file), str(cont), os.devnull],
                    cfg,
                )
            )
            rows.append(
                measure_cmd("qeltrix_v6.unpack() whole process ->/dev/null", size, api_cmd("unpack", cont), cfg)
            )
            log("random 64 KiB reads ...")
            res["reads"] = random_reads(cont, inp, cfg, cfg.reads)
            res["checks"]["reads"] = res["reads"].get("mismatches") == 0 if "mismatches" in res["reads"] else None
            res["proc_reads"] = fresh_process_reads(cont, inp, cfg, size)
            res["checks"]["proc_reads"] = res["proc_reads"]["mismatches"] == 0
            res["cli_cat"] = cli_cat_reads(cont, inp, key_file, cfg, size)
            res["checks"]["cli_cat"] = res["cli_cat"]["mismatches"] == 0
            cont.unlink()
        else:
            res["checks"]["unpack_sha256"] = False
            res["reads"], res["proc_reads"], res["cli_cat"] = {}, {}, {}
        os.sync()

        age = age_bench(work, inp, size, in_sha, cfg)
        res["age"] = age
        if "decrypt_ok" in age:
            res["checks"]["age"] = age["decrypt_ok"]
            rows += [age[k] for k in ("encrypt_file", "encrypt_file_fsync", "encrypt_null")]
            rows += [age[k] for k in ("decrypt_file", "decrypt_file_fsync", "decrypt_null")]

        stream = None
        if cfg.rss_size:
            stream = rss_stream(cfg, cfg.rss_size)
            rows.append(stream["measure"])
        res["rows"] = rows
        res["loadavg_end"] = os.getloadavg()

        byname = {m.name: m for m in rows}
        pack_ff, pack_null = byname["qeltrix pack file->file"], byname["qeltrix pack file->/dev/null (fd)"]
        unpack_ff = byname.get("qeltrix unpack file->file")
        unpack_null = byname.get("qeltrix unpack file->/dev/null (fd)")
        limit = res["limits"]["limit_gbps"]
        targets: list[tuple[str, float | None, Any, bool | None]] = []

        def add(name: str, value: float | None, target: float) -> None:
            targets.append((name, value, target, None if value is None else value >= target))

        cli_pack, cli_unpack = byname["qeltrix pack (CLI) ->/dev/null"], byname.get("qeltrix unpack (CLI) ->/dev/null")
        add("CLI pack ->/dev/null / SHA+AES limit", ratio(cli_pack.best, limit), TARGET_CLI_PACK_OVER_LIMIT)
        if "encrypt_null" in age:
            cli_pack_age = ratio(cli_pack.best, age["encrypt_null"].best)
            cli_unpack_age = ratio(cli_unpack.best if cli_unpack else None, age["decrypt_null"].best)
            add("CLI pack ->/dev/null / age encrypt ->/dev/null", cli_pack_age, TARGET_CLI_PACK_OVER_AGE)
            add("CLI unpack ->/dev/null / age decrypt ->/dev/null", cli_unpack_age, TARGET_CLI_UNPACK_OVER_AGE)
            # The most a command of this format can reach: a reader must SHA-256 and AES-GCM
            # every byte (FORMAT.md section 5), so with both cores busy from the first instant
            # and a start no longer than the bare interpreter's, it takes size / limit + that.
            start_ms = res["cli_cat"].get("python_pass_p50_ms")
            if start_ms is not None and limit and age["decrypt_null"].best:
                floor_s = size / (limit * 1e9) + start_ms / 1000
                ceiling = (size / (age["decrypt_null"].best * 1e9)) / floor_s
                targets.append(("ceiling: age decrypt / (limit + python -c pass)", ceiling, "n/a", None))
        for what, api_name in (("pack", "qeltrix_v6.pack() whole process ->/dev/null"),
                               ("unpack", "qeltrix_v6.unpack() whole process ->/dev/null")):  # fmt: skip
            cli_m, api_m = byname.get(f"qeltrix {what} (CLI) ->/dev/null"), byname.get(api_name)
            value = ratio(cli_m.best if cli_m else None, api_m.best if api_m else None)
            targets.append((f"CLI {what} / API {what}, whole processes", value, "~ 1", None))
        cat50 = res["cli_cat"].get("p50_ms")
        targets.append(("CLI cat 64 KiB, fresh process, p50 (ms)", cat50, f"< {TARGET_CLI_CAT_MS:g}",
                        None if cat50 is None else cat50 < TARGET_CLI_CAT_MS))  # fmt: skip
        # The same net of the interpreter's own start, measured alongside: what the target allows
        # qeltrix on a quiet machine (100 ms with `python -c pass` at 20 ms). A reference on a
        # busy machine, where the interpreter alone can take 100 ms.
        pass50 = res["cli_cat"].get("python_pass_p50_ms")
        net = None if cat50 is None or pass50 is None else cat50 - pass50
        targets.append(("CLI cat p50 minus python -c pass p50 (ms)", net, f"< {TARGET_CLI_CAT_MS - 20:g}", None))
        add("pack ->/dev/null / SHA+AES limit", ratio(pack_null.best, limit), TARGET_PACK_OVER_LIMIT)
        add("pack file->file / SHA+AES limit", ratio(pack_ff.best, limit), TARGET_PACK_OVER_LIMIT)
        if "encrypt_file" in age:
            uff, unull = (unpack_ff.best if unpack_ff else None), (unpack_null.best if unpack_null else None)
            for what, ours, theirs, target in (
                ("pack ->/dev/null / age encrypt ->/dev/null", pack_null.best, "encrypt_null", TARGET_PACK_OVER_AGE),
                ("pack file->file / age encrypt file->file", pack_ff.best, "encrypt_file", TARGET_PACK_OVER_AGE),
                ("pack file->file / age encrypt + fsync", pack_ff.best, "encrypt_file_fsync", TARGET_PACK_OVER_AGE),
                ("unpack ->/dev/null / age decrypt ->/dev/null", unull, "decrypt_null", TARGET_UNPACK_OVER_AGE),
                ("unpack file->file / age decrypt file->file", uff, "decrypt_file", TARGET_UNPACK_OVER_AGE),
                ("unpack file->file / age decrypt + fsync", uff, "decrypt_file_fsync", TARGET_UNPACK_OVER_AGE),
            ):
                add(what, ratio(ours, age[theirs].best), target)
        p50 = res["reads"].get("p50_ms")
        targets.append(("64 KiB random read p50, in-process (ms)", p50, f"< {TARGET_READ_P50_MS:g}",
                        None if p50 is None else p50 < TARGET_READ_P50_MS))  # fmt: skip
        rss = pack_ff.peak_rss_mib
        targets.append((f"peak RSS, pack {fmt_size(size)} file->file (MiB)", rss, f"< {TARGET_RSS_MIB}",
                        None if rss is None else rss < TARGET_RSS_MIB))  # fmt: skip
        if stream:
            srss = stream["measure"].peak_rss_mib
            targets.append((f"peak RSS, pack {fmt_size(stream['size'])} from a pipe (MiB)", srss, f"< {TARGET_RSS_MIB}",
                            None if srss is None else srss < TARGET_RSS_MIB))  # fmt: skip
        targets.append(("qeltrix runs that hung (deadlock/stall)", float(sum(m.hangs for m in rows)), "= 0",
                        sum(m.hangs for m in rows) == 0))  # fmt: skip
        res["targets"] = targets
        if any(m.hangs for m in rows):
            res["hang_note"] = (
                "HANGS: some qeltrix runs stopped making progress and were killed (see JSON 'errors' for the\n"
                "thread states). Throughput figures above are from the runs that completed."
            )
        print_main_report(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if json_path:
        dump_json(res, json_path)
    return res


def sweep_run(cfg: Config, json_path: str | None) -> dict[str, Any]:
    env = environment(cfg.build_commit)
    size = cfg.size
    work = Path(tempfile.mkdtemp(prefix="qeltrix-bench-", dir=cfg.tmpdir))
    res: dict[str, Any] = {"env": env, "size": size, "workers": cfg.workers, "repeats": cfg.repeats, "sweep": []}
    try:
        res["limits"] = openssl_limits(cfg)
        inp = work / "input.bin"
        log(f"writing {fmt_size(size)} of random data to {inp} ...")
        make_input(inp, size)
        os.sync()
        for bs in SWEEP_BLOCK_SIZES:
            log(f"block size {fmt_size(bs)} ...")
            cont = work / f"bs{bs}.qltx"
            common = {"block_size": bs, "workers": cfg.workers}
            ff = measure_child(
                f"pack file->file bs={fmt_size(bs)}",
                size,
                {"op": "pack", "src": str(inp), "dst": str(cont), **common},
                cfg,
            )
            null = measure_child(
                f"pack ->/dev/null bs={fmt_size(bs)}",
                size,
                {"op": "pack", "src": str(inp), "dst": "devnull-fd", **common},
                cfg,
            )
            row: dict[str, Any] = {"block_size": bs, "pack_file": ff, "pack_null": null}
            if cont.exists():
                row["unpack_null"] = measure_child(
                    f"unpack ->/dev/null bs={fmt_size(bs)}",
                    size,
                    {"op": "unpack", "src": str(cont), "dst": "devnull-fd", "workers": cfg.workers},
                    cfg,
                )
                row["reads"] = random_reads(cont, inp, cfg, cfg.reads)
                cont.unlink()
            os.sync()
            res["sweep"].append(row)
        res["loadavg_end"] = os.getloadavg()
        print_sweep_report(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if json_path:
        dump_json(res, json_path)
    return res


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_sweep_report(res: dict[str, Any]) -> None:
    env, lim = res["env"], res["limits"]
    print()
    print(f"Qeltrix V6 block-size sweep — build {env.get('commit')}")
    print(f"  {env['cpu']}, {env['cores']} cores; input {fmt_size(res['size'])}; best of {res['repeats']}; "
          f"SHA+AES limit {f3(lim['limit_gbps'])} GB/s; "
          f"load average {env['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}")  # fmt: skip
    print()
    hdr = (
        f"{'block size':>10} {'pack->null':>11} {'/limit':>7} {'pack->file':>11} {'unpack->null':>13} "
        f"{'read p50':>9} {'read p99':>9} {'pack RSS':>9} {'hangs':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for row in res["sweep"]:
        pn, pf, un, rd = row["pack_null"], row["pack_file"], row.get("unpack_null"), row.get("reads", {})
        hangs = pn.hangs + pf.hangs + (un.hangs if un else 0)
        rss = pf.peak_rss_mib
        print(
            f"{fmt_size(row['block_size']):>10} {f3(pn.best):>11} {f3(ratio(pn.best, lim['limit_gbps'])):>7} "
            f"{f3(pf.best):>11} {f3(un.best if un else None):>13} "
            f"{ms(rd.get('p50_ms')):>9} {ms(rd.get('p99_ms')):>9} "
            f"{(f'{rss:.0f} MiB' if rss else 'n/a'):>9} {hangs or '':>6}"
        )
    print("(GB/s = 1e9 bytes/s; read latencies in ms for 64 KiB at random offsets, in-process)")


def dump_json(res: dict[str, Any], path: str) -> None:
    def conv(o: Any) -> Any:
        if isinstance(o, Measure):
            return o.as_dict()
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [conv(v) for v in o]
        return o

    Path(path).write_text(json.dumps(conv(res), indent=2) + "\n")
    log(f"results written to {path}")


# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=parse_size, help="input size (default 1GiB; 128MiB with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 128 MiB, one repetition, fewer reads")
    ap.add_argument("--block-size", type=parse_size, default=None, help="qeltrix block size (default: the library's)")
    ap.add_argument(
        "--workers", type=int, default=None, help="qeltrix worker threads (default: the library's, one per core)"
    )
    ap.add_argument(
        "--sweep-block-sizes", action="store_true", help="pack throughput and read latency for 64K/256K/1M/4M blocks"
    )
    ap.add_argument(
        "--rss-size",
        type=parse_size,
        default=None,
        help="also measure peak RSS packing a stream of this size from a pipe (e.g. 4GiB)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs per throughput figure, best reported (default 3; 1 with --quick)",
    )
    ap.add_argument("--reads", type=int, default=None, help="in-process random reads (default 200; 50 with --quick)")
    ap.add_argument("--proc-reads", type=int, default=None, help="fresh-process reads (default 20; 5 with --quick)")
    ap.add_argument(
        "--max-hangs", type=int, default=2, help="hung runs tolerated per figure before giving up (default 2)"
    )
    ap.add_argument(
        "--tmpdir", default=None, help="where to write the input and outputs (default: $TMPDIR or /tmp; on disk)"
    )
    ap.add_argument("--skip-age", action="store_true", help="do not run age")
    ap.add_argument(
        "--wait-idle", type=float, default=120.0, metavar="SECONDS",
        help="before each measurement wait up to SECONDS for other processes to go quiet (default 120; 0: never)",
    )  # fmt: skip
    ap.add_argument(
        "--idle-threshold", type=float, default=0.2, metavar="CORES",
        help="'quiet' means other processes use less than CORES cores (default 0.2)",
    )  # fmt: skip
    ap.add_argument(
        "--max-noise", type=float, default=0.25, metavar="CORES",
        help="retry a run during which other processes used more than CORES cores (default 0.25)",
    )  # fmt: skip
    ap.add_argument("--noise-retries", type=int, default=4, help="noisy runs retried per figure (default 4)")
    ap.add_argument("--build-commit", help="commit the installed qeltrix_v6 was built from, for the report")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return 0

    try:
        import qeltrix_v6
    except ImportError as e:
        ap.error(f"cannot import qeltrix_v6 ({e}); run with the interpreter of a venv that has a release build")
    if not devnull_ok():
        ap.exit(2, DEVNULL_BROKEN + "\n")
    q = args.quick
    cfg = Config(
        size=args.size or ((128 << 20) if q else (1 << 30)),
        block_size=args.block_size or qeltrix_v6.DEFAULT_BLOCK_SIZE,
        workers=args.workers,
        repeats=args.repeats or (1 if q else 3),
        reads=args.reads or (50 if q else 200),
        proc_reads=args.proc_reads or (5 if q else 20),
        openssl_seconds=1 if q else 3,
        max_hangs=args.max_hangs,
        tmpdir=args.tmpdir or tempfile.gettempdir(),
        rss_size=args.rss_size,
        skip_age=args.skip_age,
        timeout_floor=30.0,
        build_commit=args.build_commit,
        wait_idle=args.wait_idle,
        idle_threshold=args.idle_threshold,
        max_noise=args.max_noise,
        noise_retries=args.noise_retries,
    )
    IDLE["wait"], IDLE["threshold"] = cfg.wait_idle, cfg.idle_threshold
    if cfg.size < READ_LEN:
        ap.error(f"--size must be at least {READ_LEN} bytes")
    if args.sweep_block_sizes:
        sweep_run(cfg, args.json)
    else:
        main_run(cfg, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
