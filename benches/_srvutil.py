"""Helpers shared by bench_seekserver.py and bench_gateway.py (not a public module).

Everything here is about running peer servers on 127.0.0.1 safely: free ports, waiting for a
listener, starting processes in their own session so that one ``killpg`` of *their* group
ends them and their children, and a hard deadline for the whole benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

KEY = bytes(range(32))  # benchmark key: public on purpose, never use it for real data
REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"128M"``, ``"64KiB"`` -> bytes (K/M/G and KiB/MiB/GiB are binary)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 128MiB, 64KiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % (scale // 16) == 0:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def run_text(cmd: list[str], timeout: float = 60) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"<{e}>"
    return (r.stdout + r.stderr).strip()


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def devnull_ok() -> bool:
    try:
        return stat.S_ISCHR(os.stat(os.devnull).st_mode)
    except OSError:
        return False


def free_port() -> int:
    """A port that was free a moment ago (peers that cannot bind port 0 need one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")


def which_or_none(name: str) -> str | None:
    return shutil.which(name)


class Procs:
    """Processes this benchmark started; each leads its own session (process group)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[Any], IO[bytes] | None]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        stdin_pipe: bool = False,
        capture_stdout: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[Any]:
        logf = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else logf,
            stderr=logf,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        self.procs.append((name, p, logf))
        return p

    def stop(self, p: subprocess.Popen[Any], grace: float = 5.0) -> None:
        if p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()  # our Python children stop when their stdin closes
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(grace)
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)  # the group this process leads: we created it
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(grace)
        if p.stdout is not None:
            with contextlib.suppress(OSError):
                p.stdout.close()
        for entry in [e for e in self.procs if e[1] is p]:
            self.procs.remove(entry)
            if entry[2] is not None:
                entry[2].close()

    def stop_all(self) -> None:
        for _name, p, _logf in reversed(list(self.procs)):
            self.stop(p)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logdir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Deadline(Exception):
    pass


@contextlib.contextmanager
def hard_deadline(
    seconds: float,
    procs: Procs | None = None,
    on_hang: Callable[[], None] | None = None,
    grace: float = 30.0,
) -> Iterator[None]:
    """Raise :class:`Deadline` in the main thread after ``seconds`` (and on SIGTERM/SIGHUP), so
    that ``finally`` blocks stop every peer we started.

    A signal handler only runs when the main thread gets back to Python code; if it is stuck
    in native code (a hung library call), a watchdog thread stops ``procs`` and exits the
    process ``grace`` seconds later, so the benchmark still ends by itself."""
    import threading

    def on_alarm(signum: int, frame: object) -> None:
        raise Deadline(f"benchmark deadline of {seconds:.0f} s reached (signal {signum})")

    def on_term(signum: int, frame: object) -> None:
        arm_watchdog(grace)
        on_alarm(signum, frame)

    def watchdog() -> None:
        log(f"the main thread did not stop at the deadline: stopping every peer and exiting (code {EXIT_HUNG})")
        if procs is not None:
            with contextlib.suppress(Exception):
                procs.stop_all()
        if on_hang is not None:
            with contextlib.suppress(Exception):
                on_hang()
        os._exit(EXIT_HUNG)

    timers: list[threading.Timer] = []

    def arm_watchdog(after: float) -> None:
        t = threading.Timer(after, watchdog)
        t.daemon = True
        t.start()
        timers.append(t)

    old = {signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm)}
    old.update({s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGHUP)})
    signal.alarm(max(1, int(seconds)))
    arm_watchdog(seconds + grace)
    try:
        yield
    finally:
        signal.alarm(0)
        for t in timers:
            t.cancel()
        for s, h in old.items():
            signal.signal(s, h)


EXIT_HUNG = 4


def run_in_workdir(
    prefix: str, max_seconds: float, body: Callable[[Path, Procs], Any], keep: bool = False
) -> tuple[bool, Any]:
    """Run ``body(work, procs)`` in a fresh work directory under :func:`hard_deadline`; stop
    every process it started and remove the directory (unless ``keep``) however it ends.
    Returns ``(True, its result)``, or ``(False, None)`` when the deadline stopped it (logged)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Procs(work)
    try:
        cleanup = None if keep else (lambda: shutil.rmtree(work, ignore_errors=True))
        with hard_deadline(max_seconds, procs, cleanup):
            return True, body(work, procs)
    except Deadline as e:
        log(f"ABORTED: {e}")
        return False, None
    finally:
        procs.stop_all()
        if keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def child_lifetime_guard(max_seconds: float, on_exit: Callable[[], None]) -> None:
    """In a child process: block until stdin closes (the parent ended or said stop) or
    ``max_seconds`` pass, then call ``on_exit``. Either way the child stops by itself."""
    import threading

    done = threading.Event()

    def wait_stdin() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.buffer.read()
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    done.wait(max_seconds)
    on_exit()


def git_commit() -> str:
    out = run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run_text(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return out + ("+dirty" if dirty and not dirty.startswith("<") else "")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def fnum(x: float | None, fmt: str = ".2f") -> str:
    if x is None or x != x:  # None or NaN
        return "n/a"
    return format(x, fmt)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def cpu_seconds(leaders: Sequence[int]) -> float:
    """CPU seconds (user + system, all threads, plus reaped children) of every process in the
    sessions these processes lead: socat's per-connection forks and nginx workers count too."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = set(leaders)
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[3] is the session id (field 6 of proc(5)); utime..cstime are fields 14-17.
        if int(entry) in wanted or int(fields[3]) in wanted:
            total += sum(int(x) for x in fields[11:15]) / tick
    return total


def peak_rss_bytes(leaders: Sequence[int], field: str = "VmHWM:") -> int:
    """Sum of the peak resident set sizes (VmHWM; ``field="VmRSS:"`` for the current ones) of
    every live process in the sessions these processes lead (nginx: master and workers)."""
    wanted = set(leaders)
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                sid = int(f.read().rsplit(")", 1)[1].split()[3])
            if int(entry) not in wanted and sid not in wanted:
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def machine_busy(seconds: float = 1.0) -> float:
    """Percent of all cores busy over ``seconds`` while this benchmark is idle: other work on
    the machine (a test suite, a build) that would skew every figure."""
    b0, t0 = _cpu_times()
    time.sleep(seconds)
    b1, t1 = _cpu_times()
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 10.0) -> float:
    """Wait (up to ``max_wait`` seconds) until other work uses under ``threshold``% of the
    machine; return the last reading."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy >= threshold and time.monotonic() < deadline:
        log(f"  the machine is {busy:.0f}% busy with other work; waiting for it to settle")
        time.sleep(4)
        busy = machine_busy()
    return busy


class Profiler:
    """perf and/or py-spy attached to server processes for one phase (``--profile DIR``).

    One pid writes ``DIR/TAG.perf`` and ``DIR/TAG.pyspy.txt``; several write ``TAG-N.*``.
    """

    def __init__(self, outdir: Path, tag: str, pids: int | list[int], *, perf_hz: int = 499, rate: int = 200) -> None:
        self.outdir, self.tag = outdir, tag
        self.pids = [pids] if isinstance(pids, int) else pids
        self.perf_hz, self.rate = perf_hz, rate
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, cmd: list[str]) -> None:
        self.procs.append(
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        )

    def __enter__(self) -> Profiler:
        self.outdir.mkdir(parents=True, exist_ok=True)
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        for i, pid in enumerate(self.pids):
            base = self.outdir / (self.tag if len(self.pids) == 1 else f"{self.tag}-{i}")
            if shutil.which("perf"):
                self._spawn(["perf", "record", "-F", str(self.perf_hz), "-g", "-p", str(pid), "-o", f"{base}.perf"])
            if os.path.exists(pyspy):
                self._spawn(
                    [pyspy, "record", "--pid", str(pid), "--native", "--idle", "--rate", str(self.rate),
                     "--format", "raw", "-o", f"{base}.pyspy.txt"]
                )  # fmt: skip
        time.sleep(1.0)  # let the samplers attach
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log(f"  profile written to {self.outdir}/{self.tag}*")
