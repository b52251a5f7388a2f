"""`qeltrix serve`, `qeltrix gateway` and `qeltrix recover` as real subprocesses."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY, running_cli


@contextlib.contextmanager
def running(*args: str, ready: str) -> Iterator[tuple[subprocess.Popen[str], re.Match[str]]]:
    """Start `python -m qeltrix_v6 ARGS`, wait for the stderr line matching `ready`."""
    with running_cli(*args, ready=ready) as (proc, match, _):
        yield proc, match


def test_serve_subprocess_answers_ranges(tmp_path: Path, key_file: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(500_000)
    qeltrix_v6.pack(io.BytesIO(data), root / "clip.bin.qltx", key=KEY)
    with running("serve", str(root), "--port", "0", "--key-file", str(key_file), ready=r"on (http://\S+)") as (
        proc,
        m,
    ):
        req = urllib.request.Request(m.group(1) + "/clip.bin", headers={"Range": "bytes=250000-250009"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 206 and resp.read() == data[250000:250010]
    assert proc.returncode == 0


@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_sigterm_is_a_clean_stop(tmp_path: Path, key_file: Path, command: str) -> None:
    """SIGTERM (systemd, docker stop) stops a server cleanly: exit 0, no error line."""
    args = (
        ["serve", str(tmp_path), "--port", "0", "--key-file", str(key_file)]
        if command == "serve"
        else ["gateway", "--mode", "reflect", "--listen", "127.0.0.1:0", "--key-file", str(key_file)]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "qeltrix_v6", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line or "serving" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "error" not in err and "Traceback" not in err


def test_serve_without_a_key_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QELTRIX_PASSPHRASE"}
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "serve", str(tmp_path), "--port", "0"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith("qeltrix: error: no key given")
    assert "Traceback" not in r.stderr


def echo_server() -> tuple[socket.socket, tuple[str, int]]:
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                while d := c.recv(65536):
                    c.sendall(d)
                c.shutdown(socket.SHUT_WR)

    threading.Thread(target=run, daemon=True).start()
    return srv, srv.getsockname()


def test_gateway_subprocess_pair(key_file: Path) -> None:
    srv, (h, p) = echo_server()
    addr = r"listening on (\S+):(\d+)"
    with (
        running("gateway", "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"{h}:{p}",
                "--key-file", str(key_file), ready=addr) as (_, d),
        running("gateway", "--mode", "router", "--listen", "127.0.0.1:0", "--target", f"{d.group(1)}:{d.group(2)}",
                "--key-file", str(key_file), ready=addr) as (_, r),
    ):  # fmt: skip
        data = os.urandom(1 << 20)
        with socket.create_connection((r.group(1), int(r.group(2))), timeout=20) as s:
            got = bytearray()
            t = threading.Thread(target=lambda: [got.extend(c) for c in iter(lambda: s.recv(65536), b"")])
            t.start()
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            t.join(30)
        assert bytes(got) == data
    srv.close()


def test_gateway_bad_mode_and_missing_key(key_file: Path) -> None:
    for args, needle in (
        (["--mode", "teleport", "--listen", "127.0.0.1:0", "--key-file", str(key_file)], "unknown mode"),
        (["--mode", "reflect", "--listen", "127.0.0.1:0"], "needs the shared key"),
        (["--mode", "router", "--listen", "127.0.0.1:0", "--key-file", str(key_file)], "needs a target"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "qeltrix_v6", "gateway", *args], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr


def test_recover_subprocess(tmp_path: Path, key_file: Path) -> None:
    data = os.urandom(600_000)
    with (
        qeltrix_v6.GatewayServer("reflect", "127.0.0.1:0", key=KEY, block_size=65536) as gw,
        socket.create_connection(gw.address) as s,
    ):
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        stream = b"".join(iter(lambda: s.recv(65536), b""))
    part = tmp_path / "cut.part"
    part.write_bytes(stream[: len(stream) // 2])
    out = tmp_path / "cut.qltx"
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "recover", str(part), str(out), "--key-file", str(key_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "INCOMPLETE" in r.stderr
    plain = tmp_path / "plain"
    argv = [sys.executable, "-m", "qeltrix_v6", "unpack", str(out), str(plain), "--key-file", str(key_file)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 5 and not plain.exists(), r.stderr  # incomplete: refused by default
    r = subprocess.run([*argv, "--allow-incomplete"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = plain.read_bytes()
    assert 0 < len(got) < len(data) and got == data[: len(got)]


def test_gateway_subprocess_pinned_identities(tmp_path: Path) -> None:
    pubs = {}
    for name in ("a", "b"):
        r = subprocess.run(
            [sys.executable, "-m", "qeltrix_v6", "keygen", "--x25519", "-o", str(tmp_path / f"{name}.id")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        pubs[name] = r.stdout.strip()
        assert pubs[name].startswith("qltx-x25519:")
        assert (tmp_path / f"{name}.id").stat().st_mode & 0o777 == 0o600
    srv, (h, p) = echo_server()
    addr = r"listening on (\S+):(\d+)"
    with (
        running("gateway", "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"{h}:{p}",
                "--identity", str(tmp_path / "b.id"), "--peer", pubs["a"], ready=addr) as (_, d),
        running("gateway", "--mode", "router", "--listen", "127.0.0.1:0", "--target", f"{d.group(1)}:{d.group(2)}",
                "--identity", str(tmp_path / "a.id"), "--peer", pubs["b"], ready=addr) as (_, r),
    ):  # fmt: skip
        data = os.urandom(200_000)
        with socket.create_connection((r.group(1), int(r.group(2))), timeout=20) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            assert b"".join(iter(lambda: s.recv(65536), b"")) == data
    srv.close()
