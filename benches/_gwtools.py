"""Bulk throughput through gateway pairs with real tools (issue 12), for
``bench_gateway.py --tools``.

For each relay (direct, a qeltrix router+decrypt pair in shared-key and in pinned-key mode,
an stunnel TLS 1.3 pair, spiped), in one run and in front of the same servers:

- iperf3 (``iperf3 -s`` started here): ``iperf3 -c 127.0.0.1 -p RELAY -t T -J`` forward (the
  request direction of the pair), with ``-R`` (the reply direction) and with ``-P 4``; the
  figure is ``end.sum_received.bits_per_second``. iperf3's control connection goes through the
  relay too (the relay forwards every connection to the iperf3 server's port);
- curl of one file (1 GiB; ``--quick`` 256 MiB, a 1 MiB random pattern repeated) served by an
  nginx started here (``sendfile on``): ``curl -o /dev/null -w '%{size_download}
  %{speed_download}'``, three times (the median and the spread); a short download is a
  failure, not a figure. The same file is then fetched once more, untimed, and compared byte
  for byte;
- the relays' CPU (user + system, every process of the pair) per byte received.

Needs iperf3, nginx, curl, stunnel4, spiped and openssl (Debian packages;
``scripts/install-bench-deps.sh`` installs what the benches need beyond the test suite).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from _srvutil import (
    LOOPBACK,
    Deadline,
    Procs,
    cpu_seconds,
    fmt_size,
    fnum,
    free_port,
    git_commit,
    log,
    print_table,
    ratio,
    run_in_workdir,
    wait_port,
    wait_quiet,
)

PATTERN_LEN = 1 << 20
CURL_REPEATS = 3  # one 256 MiB download takes ~0.3 s: the median of three, and the spread
# tool -> Debian package, per relay ("" for every relay)
NEEDS = {
    "": {"iperf3": "iperf3", "nginx": "nginx", "curl": "curl"},
    "stunnel": {"stunnel": "stunnel4", "openssl": "openssl"},
    "spiped": {"spiped": "spiped"},
}
QELTRIX = ("qeltrix", "qeltrix-pinned")


def missing_tools(relays: list[str]) -> list[str]:
    """'tool (Debian package pkg)' for every tool these relays need that is not on the PATH."""
    out = []
    for group in ("", *relays):
        for tool, pkg in NEEDS.get(group, {}).items():
            if not shutil.which(tool):
                out.append(f"{tool} (Debian package {pkg})")
    return out


def parse_iperf3(text: str) -> dict[str, float]:
    """What ``iperf3 -J`` reports the receiver got: bytes, seconds, Gbit/s. Raises on an error."""
    j = json.loads(text)
    if j.get("error"):
        raise RuntimeError(f"iperf3: {j['error']}")
    s = j["end"]["sum_received"]
    if not s.get("bytes"):
        raise RuntimeError("iperf3: the receiver got no bytes")
    return {"bytes": float(s["bytes"]), "seconds": float(s["seconds"]), "gbit_s": s["bits_per_second"] / 1e9}


def parse_curl(text: str, want: int) -> dict[str, float]:
    """``%{size_download} %{speed_download}`` -> bytes and MB/s; a short download raises."""
    size, speed = text.split()
    if int(float(size)) != want:
        raise RuntimeError(f"curl downloaded {size} bytes of {want}")
    return {"bytes": float(want), "mb_s": float(speed) / 1e6}


def iperf3(port: int, seconds: int, extra: list[str]) -> dict[str, float]:
    argv = ["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "10000"]
    r = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=seconds + 90, check=False)
    try:
        return parse_iperf3(r.stdout)
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 {' '.join(extra)} exited {r.returncode}: {r.stderr.strip()[-300:]}") from e


def iperf3_ready(port: int, tries: int = 10) -> int:
    """A 1-second warm-up through the relay, retried until the iperf3 server takes it; returns the
    retries. The relays' own readiness probes (a connect and close, see wait_port) reach the
    iperf3 server too, which serves one client at a time and resets a control connection that
    arrives while it still waits for a previous one: direct too, without a relay, iperf3 3.12
    answers "unable to receive control message: Connection reset by peer" then."""
    for i in range(tries):
        try:
            iperf3(port, 1, [])
            return i
        except RuntimeError as e:
            if i == tries - 1:
                raise RuntimeError(f"warm-up failed {tries} times, last: {e}") from e
            log(f"  iperf3 warm-up: {e}; retrying in 1 s")
            time.sleep(1)
    return tries


def curl(port: int, size: int) -> dict[str, float]:
    argv = ["curl", "-s", "-S", "--max-time", "900", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}"]
    r = subprocess.run(
        [*argv, f"http://{LOOPBACK}:{port}/file"], capture_output=True, text=True, timeout=960, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"curl exited {r.returncode}: {r.stderr.strip()[-300:]} ({r.stdout.strip()})")
    return parse_curl(r.stdout, size)


def curl_verify(port: int, size: int, pattern: bytes) -> None:
    """Fetch the file once more (untimed) and compare every byte with what nginx serves."""
    p = subprocess.Popen(
        ["curl", "-s", "-S", "--max-time", "900", f"http://{LOOPBACK}:{port}/file"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None
    out = cast(io.BufferedReader, p.stdout)
    got = 0
    buf = bytearray(PATTERN_LEN)
    view = memoryview(buf)
    try:
        while True:
            n = 0
            while n < PATTERN_LEN and (k := out.readinto(view[n:])):
                n += k
            if n == 0:
                break
            if view[:n] != pattern[:n] or got + n > size:
                raise RuntimeError(f"wrong bytes through the relay in {got}..{got + n} of the file")
            got += n
            if n < PATTERN_LEN:
                break
    finally:
        p.stdout.close()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if got != size:
        raise RuntimeError(f"verifying fetch got {got} bytes of {size} (curl exit {p.returncode})")


def write_file(path: Path, size: int, pattern: bytes) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(pattern))
            f.write(pattern[:n])
            left -= n


def run_tools(args: argparse.Namespace, work: Path, procs: Procs) -> dict[str, Any]:
    import bench_seekserver as bs
    from _gwapps import start_relay

    relays = [r for r in (x.strip() for x in args.app_relays.split(",")) if r]
    secs = 5 if args.quick else 10
    size = (256 << 20) if args.quick else (1 << 30)
    parallel = 4
    pattern = random.Random(args.seed).randbytes(PATTERN_LEN)
    www = work / "www"
    www.mkdir()
    os.chmod(work, 0o755)  # nginx workers run as an unprivileged user when we are root
    write_file(www / "file", size, pattern)
    url, _pid = bs.start_nginx(procs, work, www, 1)
    nginx_port = int(url.rsplit(":", 1)[1])
    ip_port, ipp = start_iperf3_server(procs)
    results: dict[str, Any] = {
        "commit": args.build_commit or git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "iperf3_seconds": secs,
        "iperf3_parallel": parallel,
        "curl_bytes": size,
        "curl_repeats": CURL_REPEATS,
        "loadavg_start": os.getloadavg(),
        "relays": {},
    }
    # Every relay is started first (one in front of iperf3, one in front of nginx), then each
    # test runs through every relay in turn, so that the figures compared in a column were
    # measured within a minute of each other (alternate rounds go in reverse order).
    entry: dict[str, dict[str, int]] = {}
    relay_pids: dict[str, dict[str, list[int]]] = {}
    R: dict[str, dict[str, Any]] = results["relays"]
    for name in relays:
        R[name] = {"busy_pct": [], "loadavg": []}
        try:
            entry[name], relay_pids[name] = {}, {}
            for target, port in (("iperf3", ip_port), ("nginx", nginx_port)):
                entry[name][target], relay_pids[name][target] = start_relay(name, procs, work, port)
            R[name]["iperf3_warmup_retries"] = iperf3_ready(entry[name]["iperf3"])
        except Deadline:
            raise
        except Exception as e:
            fail(R[name], e)
    tests: list[tuple[str, list[str]]] = [("iperf3", []), ("iperf3_R", ["-R"]), ("iperf3_P", ["-P", str(parallel)])]
    rounds: list[tuple[str, list[str]]] = [*tests, ("curl", [])]
    for k, (key, extra) in enumerate(rounds):
        busy = wait_quiet(args.wait_quiet)
        label = "curl" if key == "curl" else f"iperf3 {' '.join(extra) or 'forward'}"
        log(f"[{label}] (other work on the machine: {busy:.0f}% busy, load {os.getloadavg()[0]:.2f})")
        for i, name in enumerate(relays if k % 2 == 0 else relays[::-1]):
            r = R[name]
            if "error" in r:
                continue
            if i:
                busy = wait_quiet(min(args.wait_quiet, 20))
            r["busy_pct"].append(busy)
            r["loadavg"].append(os.getloadavg()[0])
            pids = relay_pids[name]["nginx" if key == "curl" else "iperf3"]
            try:
                c0 = cpu_seconds(pids) if pids else 0.0
                if key == "curl":
                    port = entry[name]["nginx"]
                    runs = [curl(port, size)["mb_s"] for _ in range(CURL_REPEATS)]
                    cpu = (cpu_seconds(pids) - c0) / (size * CURL_REPEATS) * 1e9 if pids else None
                    r[key] = {"mb_s": statistics.median(runs), "runs_mb_s": runs, "relay_cpu_ns_per_byte": cpu}
                    log(f"  {name}: {fmt_size(size)} x {CURL_REPEATS}: {', '.join(f'{x:.0f}' for x in runs)} MB/s "
                        f"(median {r[key]['mb_s']:.0f})  relay CPU {fnum(cpu)} ns/byte")  # fmt: skip
                    curl_verify(port, size, pattern)
                    r["verified"] = True
                else:
                    r[key] = iperf3(entry[name]["iperf3"], secs, extra)
                    n = r[key]["bytes"]
                    r[key]["relay_cpu_ns_per_byte"] = (cpu_seconds(pids) - c0) / n * 1e9 if pids else None
                    log(f"  {name}: {r[key]['gbit_s']:.2f} Gbit/s  relay CPU "
                        f"{fnum(r[key]['relay_cpu_ns_per_byte'])} ns/byte")  # fmt: skip
            except Deadline:
                raise  # an Exception too: not a failure of this relay, the end of the run
            except Exception as e:  # reported in the table and as a FAIL line
                fail(r, e)
                if key != "curl":
                    procs.stop(ipp)  # a test cut short can leave the server busy: start a fresh one
                    ip_port, ipp = start_iperf3_server(procs, ip_port)
    for name in relays:
        for pids in relay_pids.get(name, {}).values():
            stop_pids(procs, pids)
    results["loadavg_end"] = os.getloadavg()
    return results


def fail(r: dict[str, Any], e: Exception) -> None:
    r["error"] = f"{type(e).__name__}: {e}"
    log(f"  FAILED: {r['error']}")


def start_iperf3_server(procs: Procs, port: int = 0) -> tuple[int, subprocess.Popen[Any]]:
    """``iperf3 -s`` on 127.0.0.1, kept for the whole run (one test at a time, as iperf3 does);
    a restart reuses the port the relays forward to."""
    port = port or free_port()
    p = procs.start("iperf3-server", ["iperf3", "-s", "-B", LOOPBACK, "-p", str(port), "--idle-timeout", "120"])
    wait_port(port, 15, p)
    return port, p


def stop_pids(procs: Procs, pids: list[int]) -> None:
    for p in [p for _n, p, _f in procs.procs if p.pid in pids]:
        procs.stop(p)


def span(values: list[float] | None, fmt: str = ".0f") -> str:
    """'min-max' of the values, or n/a."""
    return f"{min(values):{fmt}}-{max(values):{fmt}}" if values else "n/a"


def times(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def report_tools(res: dict[str, Any], relays: list[str]) -> bool:
    """Print the table, the ratios and the PASS/FAIL lines; True when every line passed."""
    R = res["relays"]

    def g(name: str, test: str, field: str) -> float | None:
        v = R.get(name, {}).get(test, {}).get(field)
        return v if isinstance(v, int | float) else None

    la0, la1 = res["loadavg_start"], res["loadavg_end"]
    print()
    print(
        f"Bulk with real tools  commit {res['commit']}  {res['date']}  iperf3 -t {res['iperf3_seconds']}, "
        f"curl {fmt_size(res['curl_bytes'])} x {res['curl_repeats']} (median)  load average "
        f"{la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f} at start, {la1[0]:.2f} {la1[1]:.2f} {la1[2]:.2f} at end"
    )
    P = res["iperf3_parallel"]
    headers = ["relay", "iperf3 Gbit/s", "-R Gbit/s", f"-P {P} Gbit/s", "curl MB/s", "curl min-max",
               "CPU ns/B fwd", "-R", f"-P {P}", "curl", "load 1 min", "bg busy% max", "ok"]  # fmt: skip
    rows = []
    for n in relays:
        r = R.get(n, {})
        rows.append([
            n, fnum(g(n, "iperf3", "gbit_s")), fnum(g(n, "iperf3_R", "gbit_s")), fnum(g(n, "iperf3_P", "gbit_s")),
            fnum(g(n, "curl", "mb_s"), ".0f"), span(r.get("curl", {}).get("runs_mb_s")),
            fnum(g(n, "iperf3", "relay_cpu_ns_per_byte")), fnum(g(n, "iperf3_R", "relay_cpu_ns_per_byte")),
            fnum(g(n, "iperf3_P", "relay_cpu_ns_per_byte")), fnum(g(n, "curl", "relay_cpu_ns_per_byte")),
            span(r.get("loadavg"), ".1f"), fnum(max(r.get("busy_pct") or [float("nan")]), ".0f"),
            "NO " + r["error"][:70] if "error" in r else "yes",
        ])  # fmt: skip
    print_table(headers, rows)
    print()
    checks: list[tuple[str, bool, str]] = []
    metrics = [("iperf3", "gbit_s", "iperf3"), ("iperf3_R", "gbit_s", "iperf3 -R"),
               ("iperf3_P", "gbit_s", f"iperf3 -P {P}"), ("curl", "mb_s", "curl")]  # fmt: skip
    for q in QELTRIX:
        if q not in R:
            continue
        for o in ("stunnel", "spiped"):
            if o in R:
                parts = [f"{label} {times(ratio(g(q, t, f), g(o, t, f)))}" for t, f, label in metrics]
                print(f"{q} vs {o}: " + ", ".join(parts))
        if "stunnel" in R:
            for t, f, label in metrics:
                a, b = g(q, t, f), g("stunnel", t, f)
                x = ratio(a, b)
                passed = x is not None and x >= 1.0
                checks.append((f"{q} {label} >= stunnel", passed, f"{times(x)} ({fnum(a)} vs {fnum(b)})"))
    for n in relays:
        if "error" in R.get(n, {}):
            checks.append((f"{n}: every transfer complete and every byte right", False, R[n]["error"][:200]))
        elif n in QELTRIX:
            checks.append((f"{n}: every transfer complete and every byte right", bool(R[n].get("verified")), ""))
    print()
    for what, passed, value in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {what}  {value}")
    return bool(checks) and all(p for _w, p, _v in checks)


def main_tools(args: argparse.Namespace) -> int:
    relays = [r for r in (x.strip() for x in args.app_relays.split(",")) if r]
    from _gwapps import APP_RELAYS

    unknown = [r for r in relays if r not in APP_RELAYS]
    if unknown:
        log(f"qeltrix-bench: error: unknown relay {', '.join(unknown)} (--app-relays: {', '.join(APP_RELAYS)})")
        return 2
    missing = missing_tools(relays)
    if missing:
        log(f"qeltrix-bench: error: missing {', '.join(missing)}; scripts/install-bench-deps.sh installs them")
        return 2
    finished, results = run_in_workdir(
        "qeltrix-gwtools-", args.max_seconds, lambda work, procs: run_tools(args, work, procs), args.keep
    )
    if not finished:
        return 3
    ok = report_tools(results, relays)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit("run it as: python benches/bench_gateway.py --tools [--quick]")
