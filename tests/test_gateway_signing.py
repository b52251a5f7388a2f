"""Gateway sinks that sign what they store (FORMAT.md sections 12 and 15), over real sockets on
127.0.0.1, checked with the real `qeltrix` entry point.

- A router -> signing sink stores a SIGNED container: `verify --signer` accepts it and
  `unpack --signer` restores the data; another signer is refused (exit 4).
- A cut stream is signed too and still INCOMPLETE: the signature vouches for what the sink
  received (`verify --signer` exits 5, `unpack --allow-incomplete --signer` restores the prefix).
- `--sink-raw` streams are signed the same way; `SeekServer(signers=[...])` serves them.
- `--sign-with` is only for sinks (API and CLI), and a gateway refuses a stream whose header
  has SIGNED set (streams are never signed on the wire), before it contacts its target.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import running_cli
from qeltrix_v6 import _container, _crypto, _signing
from qeltrix_v6.gateway import KIND_HANDSHAKE

K1 = bytes(range(32))
BS = 64 << 10
SIGN_PEM, SIGN_PUB = _crypto.ed25519_generate()
SIGNER = _signing.encode_signer(SIGN_PUB)
_, OTHER_PUB = _crypto.ed25519_generate()
OTHER_SIGNER = _signing.encode_signer(OTHER_PUB)
EXIT_USAGE, EXIT_CORRUPT, EXIT_TRUNCATED = 2, 4, 5
WAIT = 20.0
META_FLAG_FINAL = 1


def run(*args: object) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QELTRIX_")}
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)], capture_output=True, env=env, timeout=120
    )


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    key, sign = tmp_path / "k.key", tmp_path / "sign.pem"
    key.write_bytes(K1)
    sign.write_bytes(SIGN_PEM)
    key.chmod(0o600)
    sign.chmod(0o600)
    sinks = tmp_path / "sink"
    sinks.mkdir()
    return {"key": key, "sign": sign, "sink": sinks}


def exchange(addr: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=60) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: s.recv(1 << 16), b""))


def stored_one(sink_dir: Path) -> Path:
    deadline = time.monotonic() + WAIT
    while not (found := sorted(sink_dir.glob("stream-*.qltx"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(found) == 1, found
    return found[0]


def cut_after(router: qeltrix_v6.GatewayServer, data: bytes, blocks: int) -> None:
    """Send `data` through `router`, then reset the client socket once `blocks` frames went out."""
    s = socket.create_connection(router.address)
    s.sendall(data)
    deadline = time.monotonic() + WAIT
    while router.stats()["blocks"] < blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # RST: a cut, not a clean end


def test_router_to_signing_sink_stores_a_container_that_verifies_only_for_its_signer(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    data = os.urandom(1 << 20) + b"tail"
    with (
        qeltrix_v6.GatewayServer(
            "sink", "127.0.0.1:0", key=K1, sink_dir=keys["sink"], block_size=BS, sign_with=keys["sign"]
        ) as sink,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=sink.address, key=K1, block_size=BS) as r,
    ):
        assert exchange(r.address, data) == b""  # the sink's acknowledgement: a clean end
    stored = stored_one(keys["sink"])
    assert _signing.public_origin(stored, frozenset({SIGN_PUB})).pinned  # checkable without the key
    v = run("verify", "--key-file", keys["key"], "--signer", SIGNER, stored)
    assert v.returncode == 0, v.stderr
    out = tmp_path / "out.bin"
    u = run("unpack", "--key-file", keys["key"], "--signer", SIGNER, stored, out)
    assert u.returncode == 0, u.stderr
    assert out.read_bytes() == data
    other = run("verify", "--key-file", keys["key"], "--signer", OTHER_SIGNER, stored)
    assert other.returncode == EXIT_CORRUPT, other.stderr


def test_cut_stream_is_signed_and_still_incomplete(keys: dict[str, Path], tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    with (
        qeltrix_v6.GatewayServer(
            "sink", "127.0.0.1:0", key=K1, sink_dir=keys["sink"], block_size=BS, sign_with=SIGN_PEM
        ) as sink,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=sink.address, key=K1, block_size=BS) as r,
    ):
        cut_after(r, data, 8)
        stored = stored_one(keys["sink"])
    origin = _signing.public_origin(stored, frozenset({SIGN_PUB}))
    assert origin.valid and origin.pinned  # the signature vouches for what the sink received...
    with pytest.raises(qeltrix_v6.TruncatedError):  # ...completeness is a separate fact
        qeltrix_v6.open(stored, key=K1, signers=[SIGNER]).read()
    v = run("verify", "--key-file", keys["key"], "--signer", SIGNER, stored)
    assert v.returncode == EXIT_TRUNCATED, v.stderr
    out = tmp_path / "prefix.bin"
    u = run("unpack", "--allow-incomplete", "--key-file", keys["key"], "--signer", SIGNER, stored, out)
    assert u.returncode == 0, u.stderr
    got = out.read_bytes()
    assert 0 < len(got) <= len(data)  # all of it may have arrived; FINAL never did
    assert got == data[: len(got)]
    other = run("unpack", "--allow-incomplete", "--key-file", keys["key"], "--signer", OTHER_SIGNER, stored, "-")
    assert other.returncode == EXIT_CORRUPT, other.stderr
    assert other.stdout == b""  # no byte released for another signer


def test_raw_signing_sink_from_the_cli_and_seekserver_with_signers(keys: dict[str, Path], tmp_path: Path) -> None:
    data = os.urandom(700_000)
    with cli_gateway(
        "--mode", "sink", "--sink-raw", "--listen", "127.0.0.1:0", "--sink-dir", str(keys["sink"]),
        "--key-file", str(keys["key"]), "--block-size", "64KiB", "--sign-with", str(keys["sign"]),
    ) as addr:  # fmt: skip
        exchange(addr, data)
        stored = stored_one(keys["sink"])
    v = run("verify", "--key-file", keys["key"], "--signer", SIGNER, stored)
    assert v.returncode == 0, v.stderr
    with qeltrix_v6.SeekServer(keys["sink"], key=K1, signers=[SIGNER]) as server:
        name = stored.name.removesuffix(".qltx")
        req = urllib.request.Request(f"{server.url}/{name}", headers={"Range": "bytes=100000-100099"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 206
            assert resp.read() == data[100000:100100]
    with (
        qeltrix_v6.SeekServer(keys["sink"], key=K1, signers=[OTHER_SIGNER]) as server,
        pytest.raises(urllib.error.HTTPError),
    ):
        urllib.request.urlopen(f"{server.url}/{stored.name.removesuffix('.qltx')}", timeout=10)


def test_raw_signing_sink_cut_by_the_client(keys: dict[str, Path]) -> None:
    with qeltrix_v6.GatewayServer(
        "sink", "127.0.0.1:0", key=K1, sink_dir=keys["sink"], sink_raw=True, block_size=BS, sign_with=SIGN_PEM
    ) as sink:
        s = socket.create_connection(sink.address)
        s.sendall(os.urandom(300_000))
        deadline = time.monotonic() + WAIT
        while sink.stats()["blocks"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        stored = stored_one(keys["sink"])
    assert _signing.public_origin(stored, frozenset({SIGN_PUB})).pinned
    assert run("verify", "--key-file", keys["key"], "--signer", SIGNER, stored).returncode == EXIT_TRUNCATED


def test_unsigned_sink_is_unchanged_and_recover_refuses_the_unfinished_part_of_a_signing_sink(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    with qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", key=K1, sink_dir=keys["sink"], sink_raw=True) as sink:
        exchange(sink.address, b"hello")
        stored = stored_one(keys["sink"])
    assert not _signing.public_origin(stored).signed
    # A signing sink that died before finishing leaves a SIGNED header and no signature:
    # recover must not turn it into a container whose signature cannot verify (FORMAT.md 15.3).
    keyring = qeltrix_v6.gateway._Keyring(K1, 1, sink_signed=True)
    header, ckeys = keyring.new_stream(None, None, 4096)
    part = tmp_path / "s.part"
    part.write_bytes(keyring.storage_header(None, header, ckeys))
    with pytest.raises(qeltrix_v6.SignatureError):
        qeltrix_v6.recover(part, tmp_path / "s.qltx", key=K1)
    assert not (tmp_path / "s.qltx").exists()


def test_sign_with_is_only_for_sinks(keys: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="only a sink"):
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target="127.0.0.1:9", key=K1, sign_with=SIGN_PEM)
    r = run(
        "gateway", "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9",
        "--key-file", keys["key"], "--sign-with", keys["sign"],
    )  # fmt: skip
    assert r.returncode == EXIT_USAGE
    assert b"--sign-with is for --mode sink" in r.stderr
    assert b"Traceback" not in r.stderr
    bad = run(
        "gateway", "--mode", "sink", "--listen", "127.0.0.1:0", "--sink-dir", keys["sink"],
        "--key-file", keys["key"], "--sign-with", keys["key"],
    )  # fmt: skip
    assert bad.returncode == EXIT_USAGE  # a 32-byte key file is never taken for a signing key
    assert b"not a PEM Ed25519 private key" in bad.stderr


def test_a_stream_header_with_signed_set_is_refused_before_the_target_is_contacted() -> None:
    contacted: list[socket.socket] = []
    target = socket.create_server(("127.0.0.1", 0))
    target.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with suppress(TimeoutError):
                contacted.append(target.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        with qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target.getsockname(), key=K1) as d:
            for signed in (True, False):
                with socket.create_connection(d.address, timeout=WAIT) as s:
                    session = _crypto.SharedKeySession(K1)
                    s.sendall(session.start())
                    session.finish(recv_exactly(s, 32))
                    cid = os.urandom(16)
                    stanzas = [(KIND_HANDSHAKE, b"")]
                    header, ckeys = _container.build_header(session.send_mk(cid), cid, 1, BS, 0, stanzas, signed=signed)
                    frame = seal_final_frame(ckeys, b"ping")
                    s.sendall(header + frame)
                    if signed:
                        assert read_until_closed(s) == (b"", "reset")  # not even a reply header
                        assert not contacted, "a SIGNED stream reached the target"
                    else:  # the control: the same stream unsigned is accepted and answered
                        assert recv_exactly(s, 8) == b"QLTXV6\r\n"
            errors = [c["error"] for c in d.stats()["per_connection"]]
    finally:
        stop.set()
        t.join(2)
        target.close()
        for c in contacted:
            c.close()
    assert errors[0] and "must not be signed" in errors[0], errors
    assert len(contacted) == 1


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "closed early"
        out += chunk
    return out


def read_until_closed(s: socket.socket) -> tuple[bytes, str]:
    s.settimeout(WAIT)
    out = b""
    try:
        while chunk := s.recv(1 << 16):
            out += chunk
    except ConnectionResetError:
        return out, "reset"
    return out, "eof"


def seal_final_frame(ckeys: _crypto.ContainerKeys, pt: bytes) -> bytes:
    """Frame 0 with FINAL set, sealed the way the Rust pump does it (FORMAT.md section 5)."""
    inbuf = bytearray(pt)
    outbuf = bytearray(_crypto.META_FRAME_LEN + len(pt) + _crypto.TAG_LEN)
    ckeys.seal_stream_frame(0, META_FLAG_FINAL, memoryview(inbuf), len(pt), memoryview(outbuf))
    return bytes(outbuf)


@contextmanager
def cli_gateway(*args: str) -> Iterator[tuple[str, int]]:
    """`qeltrix gateway ARGS` as a subprocess; yields its address, interrupts it at the end."""
    with running_cli("gateway", *args, ready=r"listening on (\S+):(\d+)") as (_, m, _lines):
        yield m.group(1), int(m.group(2))
