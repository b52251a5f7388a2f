"""Archives beside restic and borg: back up a tree, list it, restore one 10 MiB file.

    python benches/bench_archive.py                 # 2 GiB: 2,000 files + one 500 MiB file
    python benches/bench_archive.py --scale 0.1     # the same shape at a tenth of the bytes

Each tool gets the same tree and a local repository in the same temporary directory:
``qeltrix pack TREE backup.qltx`` / ``qeltrix ls`` / ``qeltrix get``, ``restic backup`` /
``restic ls latest`` / ``restic restore --include``, ``borg create`` / ``borg list`` /
``borg extract``, each with its defaults (restic and borg deduplicate and compress: the
data is random, so neither helps them here) and its local cache kept in the temporary
directory. Figures:

- wall time of each command (one run each: the machine is shared, keep runs short);
- *bytes read from storage* by list and restore: the repository's (and caches') pages are
  dropped from the page cache before the command (``posix_fadvise(DONTNEED)`` on those files
  only), and the command's ``read_bytes`` (``/proc/PID/io``: block reads it caused, kernel
  readahead included) is what a cold disk had to deliver, for every tool alike.

Needs ``restic`` and ``borg`` (Debian: ``restic``, ``borgbackup``; installed when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = bytes(range(32))  # benchmark key: public on purpose
PASSWORD = "bench-archive-password"
MiB = 1 << 20


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("restic", "restic"), ("borg", "borgbackup")) if shutil.which(tool) is None]
    if missing:
        print(f"installing {', '.join(missing)} (apt-get)", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True)


def make_tree(root: Path, scale: float) -> tuple[Path, int]:
    """2,000 files (sizes 4 KiB..~1.5 MiB, 1.5 GiB in all at scale 1) + one 500 MiB file + the
    10 MiB target, all random (nothing to deduplicate or compress)."""
    root.mkdir(parents=True)
    n = max(20, int(2000 * scale))
    small_total = int(1536 * MiB * scale)
    weights = [1 + (i * 7919) % 100 for i in range(n)]
    total_w = sum(weights)
    written = 0
    for i, w in enumerate(weights):
        d = root / f"dir{i % 40:02d}"
        d.mkdir(exist_ok=True)
        size = max(4096, small_total * w // total_w)
        (d / f"file{i:05d}.bin").write_bytes(os.urandom(size))
        written += size
    big = int(500 * MiB * scale)
    with open(root / "big.bin", "wb") as f:
        for _ in range(big // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
        f.write(os.urandom(big % (8 * MiB)))
    (root / "dir07" / "target-10MiB.bin").write_bytes(os.urandom(10 * MiB))
    return root, written + big + 10 * MiB


def files_under(*paths: Path) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [q for q in p.rglob("*") if q.is_file() and not q.is_symlink()]
    return out


def evict(*paths: Path) -> None:
    """Drop these files' pages from the page cache (written back first)."""
    for p in files_under(*paths):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_io(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, int]:
    """Wall time and ``read_bytes`` (bytes this process and its children made the kernel read
    from storage, readahead included) of a command: its ``/proc/PID/io`` is read while it is a
    zombie (``waitid(WNOWAIT)``), after it finished and before it is reaped."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    elapsed = time.perf_counter() - t
    io = dict(line.split(": ") for line in Path(f"/proc/{p.pid}/io").read_text().splitlines())
    _, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return elapsed, int(io["read_bytes"])


def timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    return run_io(cmd, env, cwd)[0]


def cold(cmd: list[str], env: dict[str, str], storage: list[Path], cwd: Path | None = None) -> tuple[float, int]:
    """Run ``cmd`` with ``storage`` (repository, caches) evicted from the page cache first."""
    evict(*storage)
    return run_io(cmd, env, cwd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 2 GiB tree (default 1)")
    ap.add_argument("--tmpdir", default=None, help="where the tree and repositories go (on disk)")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args()
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.tmpdir))
    try:
        return run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> int:
    tree, total = make_tree(work / "tree", args.scale)
    target_rel = "tree/dir07/target-10MiB.bin"
    keyfile = work / "k.key"
    keyfile.write_bytes(KEY)
    env = {
        **os.environ,
        "RESTIC_PASSWORD": PASSWORD,
        "BORG_PASSPHRASE": PASSWORD,
        "BORG_BASE_DIR": str(work / "borg-home"),
        "XDG_CACHE_HOME": str(work / "cache"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }
    q = [sys.executable, "-m", "qeltrix_v6"]
    results: dict[str, dict[str, float]] = {}
    print(f"tree: {sum(1 for _ in files_under(tree)):,} files, {total / MiB:,.0f} MiB (scale {args.scale})")
    print("machine: shared with other work during this run; one run per figure\n")

    # qeltrix
    arch = work / "backup.qltx"
    evict(tree)
    backup = timed([*q, "pack", "-q", "--key-file", str(keyfile), "tree", str(arch)], env, cwd=work)
    list_t, list_b = cold([*q, "ls", "--key-file", str(keyfile), str(arch)], env, [arch])
    out = work / "restore-qeltrix"
    get_t, get_b = cold(
        [*q, "get", "-q", "--key-file", str(keyfile), str(arch), target_rel, "-C", str(out)], env, [arch]
    )
    assert (out / target_rel).read_bytes() == (work / target_rel).read_bytes()
    results["qeltrix"] = {
        "backup_s": backup,
        "list_s": list_t,
        "list_bytes": list_b,
        "get_s": get_t,
        "get_bytes": get_b,
    }

    # The same list and restore through the API in one process, timed inside it: the work
    # itself, without the interpreter's and the CLI's start-up.
    probe = (
        "import sys, time, json, qeltrix_v6\n"
        "t = time.perf_counter()\n"
        "a = qeltrix_v6.open_archive(sys.argv[1], key=bytes(range(32)))\n"
        "n = len(a.members())\n"
        "t1 = time.perf_counter()\n"
        "a.extract(sys.argv[2], sys.argv[3])\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps([t1 - t, t2 - t1]))\n"
    )
    evict(arch)
    r = subprocess.run(
        [sys.executable, "-c", probe, str(arch), target_rel, str(work / "api-restored.bin")],
        capture_output=True,
        text=True,
        check=True,
    )
    api_list, api_get = json.loads(r.stdout)
    results["qeltrix API"] = {"list_s": api_list, "get_s": api_get}

    # restic
    repo = work / "restic-repo"
    rcache = work / "cache" / "restic"
    timed(["restic", "init", "-q", "--repo", str(repo)], env)
    evict(tree)
    backup = timed(["restic", "backup", "-q", "--repo", str(repo), "tree"], env, cwd=work)
    list_t, list_b = cold(["restic", "ls", "-q", "--repo", str(repo), "latest"], env, [repo, rcache])
    out = work / "restore-restic"
    get_t, get_b = cold(
        ["restic", "restore", "-q", "--repo", str(repo), "latest", "--target", str(out), "--include", "/" + target_rel],
        env,
        [repo, rcache],
    )
    found = list(out.rglob("target-10MiB.bin"))
    assert found and found[0].read_bytes() == (work / target_rel).read_bytes()
    results["restic"] = {"backup_s": backup, "list_s": list_t, "list_bytes": list_b, "get_s": get_t, "get_bytes": get_b}

    # borg
    brepo = work / "borg-repo"
    bhome = work / "borg-home"
    timed(["borg", "init", "-e", "repokey", str(brepo)], env)
    evict(tree)
    backup = timed(["borg", "create", f"{brepo}::b1", "tree"], env, cwd=work)
    list_t, list_b = cold(["borg", "list", f"{brepo}::b1"], env, [brepo, bhome])
    out = work / "restore-borg"
    out.mkdir()
    get_t, get_b = cold(["borg", "extract", f"{brepo}::b1", target_rel], env, [brepo, bhome], cwd=out)
    assert (out / target_rel).read_bytes() == (work / target_rel).read_bytes()
    results["borg"] = {"backup_s": backup, "list_s": list_t, "list_bytes": list_b, "get_s": get_t, "get_bytes": get_b}

    qx = results["qeltrix"]
    print(f"{'':10} {'backup':>10} {'list':>10} {'list read':>12} {'restore 10MiB':>14} {'restore read':>13}")
    for name, r in results.items():
        if "backup_s" not in r:
            print(f"{name:10} {'':>10} {r['list_s']:>9.2f}s {'':>12} {r['get_s']:>13.2f}s   (in-process, no start-up)")
            continue
        print(
            f"{name:10} {r['backup_s']:>9.2f}s {r['list_s']:>9.2f}s {r['list_bytes'] / MiB:>10.2f}MiB "
            f"{r['get_s']:>13.2f}s {r['get_bytes'] / MiB:>11.2f}MiB"
        )
    print("\nratios (peer / qeltrix; > 1 means qeltrix is faster or reads less):")
    for name in ("restic", "borg"):
        r = results[name]
        print(
            f"  {name}: backup {r['backup_s'] / qx['backup_s']:.2f}x, list {r['list_s'] / qx['list_s']:.2f}x, "
            f"restore {r['get_s'] / qx['get_s']:.2f}x, "
            f"restore bytes read {r['get_bytes'] / max(1, qx['get_bytes']):.2f}x"
        )
    api = results["qeltrix API"]
    print(
        f"  in-process API vs the peers' commands: list restic {results['restic']['list_s'] / api['list_s']:.1f}x, "
        f"borg {results['borg']['list_s'] / api['list_s']:.1f}x; restore restic "
        f"{results['restic']['get_s'] / api['get_s']:.1f}x, borg {results['borg']['get_s'] / api['get_s']:.1f}x"
    )
    print(
        f"\nqeltrix restore read {qx['get_bytes'] / MiB:.2f} MiB for a 10.00 MiB file (target: file + 2 blocks + table)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"scale": args.scale, "total_bytes": total, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
