"""Issue 9, gateway part: what a network attacker or an unauthenticated peer can do to a
gateway, tested from outside over real sockets on 127.0.0.1 (FORMAT.md sections 12, 12.2).

- An on-path relay between a router and a decrypt gateway drops the tail of a stream, flips
  a bit in a frame, reflects a reply stream as a request, or replays a recorded request: the
  plaintext endpoint sees a connection reset (never a clean end, never a byte of a bad
  frame), and a replayed or reflected stream never reaches the target at all.
- A sink that did not receive FINAL stores an INCOMPLETE container (`qeltrix info --json`).
- Unauthenticated peers cannot grow the gateway's memory (declared header_len), cannot hold
  a connection slot beyond the handshake timeout, and the open-file limit is raised at start.
- The shared-key session vector (tests/vectors/stream/shared-key.json) agrees with the product
  and with the reference decoder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import KEY, running_cli
from qeltrix_v6 import _crypto

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_decoder as ref

K1 = KEY  # the key in the key_file fixture (conftest)
VECTORS = Path(__file__).resolve().parent / "vectors"
# A connection between gateways opens with a session (FORMAT.md 12.2): msg1 from the router,
# the responder's nonce back. Written so the attacks below also run against a gateway
# without sessions (where they succeed, and these tests fail).
SESSION = hasattr(_crypto, "SharedKeySession")
UP_PRE = 72 if SESSION else 0
DOWN_PRE = 32 if SESSION else 0
HEADER_LEN = 4096
MSG = 100  # bytes per interactive message: one frame each
FRAME = 104 + MSG + 16
WAIT = 20.0


# --- real TCP endpoints ------------------------------------------------------------------


class Listener:
    """A TCP server on 127.0.0.1 that runs ``_accepted(conn)`` for each connection on a thread."""

    def __init__(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.address = self._srv.getsockname()[:2]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted(c)

    def _accepted(self, c: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._srv.close()


class Target(Listener):
    """A real TCP server that records each connection's bytes and how it ended."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.connections: list[dict[str, Any]] = []
        super().__init__()

    def _accepted(self, c: socket.socket) -> None:
        conn: dict[str, Any] = {"data": bytearray(), "end": None, "done": threading.Event()}
        self.connections.append(conn)
        threading.Thread(target=self._serve, args=(c, conn), daemon=True).start()

    def _serve(self, c: socket.socket, conn: dict[str, Any]) -> None:
        c.settimeout(60)
        try:
            while data := c.recv(1 << 16):
                conn["data"].extend(data)
                if self.echo:
                    c.sendall(data)
            conn["end"] = "eof"
        except ConnectionResetError:
            conn["end"] = "reset"
        except OSError as e:
            conn["end"] = f"error: {e}"
        finally:
            conn["done"].set()
            c.close()

    def wait_bytes(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.connections and len(self.connections[0]["data"]) >= n:
                return
            time.sleep(0.01)
        raise AssertionError(f"the target never received {n} bytes")


@contextlib.contextmanager
def target_server(echo: bool = True) -> Iterator[Target]:
    t = Target(echo)
    try:
        yield t
    finally:
        t.close()


class Relay(Listener):
    """An on-path attacker: a TCP proxy that forwards both directions and can drop the tail
    of the request direction (``up_limit`` bytes, then close), flip one bit at an offset of
    either direction, and records every connection's bytes."""

    def __init__(
        self, to: tuple[str, int], up_limit: int | None = None, flip_up: int | None = None, flip_down: int | None = None
    ) -> None:
        self.to, self.up_limit, self.flip_up, self.flip_down = to, up_limit, flip_up, flip_down
        self.recorded: list[tuple[bytearray, bytearray]] = []
        super().__init__()

    def _accepted(self, c: socket.socket) -> None:
        threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c: socket.socket) -> None:
        up_rec, down_rec = bytearray(), bytearray()
        self.recorded.append((up_rec, down_rec))
        with c, socket.create_connection(self.to) as s:

            def pump(src: socket.socket, dst: socket.socket, rec: bytearray, flip: int | None, limit: int | None):
                with contextlib.suppress(OSError):
                    while data := src.recv(1 << 16):
                        buf = bytearray(data)
                        if flip is not None and 0 <= flip - len(rec) < len(buf):
                            buf[flip - len(rec)] ^= 0x04
                        if limit is not None and len(rec) + len(buf) >= limit:
                            buf = buf[: limit - len(rec)]
                            rec.extend(buf)
                            dst.sendall(buf)
                            break  # drop the tail: close both sides (a FIN, as a cut looks)
                        rec.extend(buf)
                        dst.sendall(buf)
                    if limit is None:
                        dst.shutdown(socket.SHUT_WR)
                        return
                for sock in (c, s):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

            down = threading.Thread(target=pump, args=(s, c, down_rec, self.flip_down, None))
            down.start()
            pump(c, s, up_rec, self.flip_up, self.up_limit)
            down.join(WAIT * 2)

    def wait_up(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.recorded and len(self.recorded[0][0]) >= n:
                return
            time.sleep(0.01)
        raise AssertionError(f"the relay never forwarded {n} request bytes")


@contextlib.contextmanager
def relay(to: tuple[str, int], **kw: Any) -> Iterator[Relay]:
    r = Relay(to, **kw)
    try:
        yield r
    finally:
        r.close()


def read_until_closed(s: socket.socket, timeout: float = WAIT) -> tuple[bytes, str]:
    """Everything `s` receives, and how it ended: "eof" (FIN) or "reset" (RST)."""
    s.settimeout(timeout)
    got = bytearray()
    try:
        while data := s.recv(1 << 16):
            got.extend(data)
    except ConnectionResetError:
        return bytes(got), "reset"
    return bytes(got), "eof"


def send_or_reset(s: socket.socket, data: bytes) -> str | None:
    """Send `data`; "reset" if the connection was reset (the error is reported only once, so a
    later recv would see a plain end of input)."""
    try:
        s.sendall(data)
    except ConnectionResetError:
        return "reset"
    except BrokenPipeError:
        return None
    return None


def recv_exactly(s: socket.socket, n: int) -> bytes:
    s.settimeout(WAIT)
    got = bytearray()
    while len(got) < n:
        data = s.recv(n - len(got))
        if not data:
            break
        got.extend(data)
    return bytes(got)


def gateways(target: tuple[str, int], via: Callable[[tuple[str, int]], Any], **kw: Any) -> Any:
    """decrypt gateway -> relay (made by `via`) -> router gateway, block size 64 KiB."""
    stack = contextlib.ExitStack()
    d = stack.enter_context(
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=target, key=K1, block_size=64 << 10, **kw)
    )
    mid = stack.enter_context(via(d.address))
    r = stack.enter_context(
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=mid.address, key=K1, block_size=64 << 10)
    )
    return stack, d, mid, r


def client(r: qeltrix_v6.GatewayServer) -> socket.socket:
    c = socket.create_connection(r.address, timeout=WAIT)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def one_abort_line_per_connection(caplog: pytest.LogCaptureFixture) -> None:
    lines = [r.getMessage() for r in caplog.records if "aborted" in r.getMessage()]
    conns = [re.match(r"connection \d+ from \S+", line) for line in lines]
    assert all(conns), lines
    keys = [m.group(0) for m in conns if m]
    assert len(keys) == len(set(keys)), lines


A, B, C = b"A" * MSG, b"B" * MSG, b"C" * MSG


# --- 1. abort, never finish ----------------------------------------------------------------


def test_relay_dropping_the_request_tail_makes_both_plaintext_sides_see_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qeltrix_v6.gateway")
    with target_server() as t:
        # The relay forwards the session, the header and two whole frames, then closes.
        stack, _, _, r = gateways(t.address, lambda a: relay(a, up_limit=UP_PRE + HEADER_LEN + 2 * FRAME))
        with stack, client(r) as c:
            c.sendall(A)
            t.wait_bytes(MSG)
            c.sendall(B)
            t.wait_bytes(2 * MSG)
            sent_c = send_or_reset(c, C)  # after the cut: never reaches the decrypt gateway
            got, end = read_until_closed(c)
            end = sent_c or end
            assert t.connections[0]["done"].wait(WAIT)
    conn = t.connections[0]
    assert conn["end"] == "reset", conn["end"]  # not a FIN: the backend must not act on A+B
    assert bytes(conn["data"]) == A + B
    assert end == "reset"  # the router's client too
    assert got == (A + B)[: len(got)]
    one_abort_line_per_connection(caplog)


def test_relay_flipping_a_request_bit_resets_the_target_before_the_bad_frame() -> None:
    with target_server() as t:
        flip = UP_PRE + HEADER_LEN + FRAME + 104 + 50  # inside frame 1's data
        stack, d, _, r = gateways(t.address, lambda a: relay(a, flip_up=flip))
        with stack, client(r) as c:
            c.sendall(A)
            t.wait_bytes(MSG)
            c.sendall(B)
            got, end = read_until_closed(c)
            assert t.connections[0]["done"].wait(WAIT)
            errors = [x["error"] for x in d.stats()["per_connection"]]
    conn = t.connections[0]
    assert conn["end"] == "reset"
    assert bytes(conn["data"]) == A  # no byte of the tampered frame
    assert end == "reset" and got == A[: len(got)]
    assert any(e and "authentication" in e for e in errors), errors


def test_relay_flipping_a_reply_bit_resets_the_client_before_the_bad_frame() -> None:
    with target_server() as t:
        flip = DOWN_PRE + HEADER_LEN + FRAME + 104 + 50  # inside reply frame 1's data
        stack, _, _, r = gateways(t.address, lambda a: relay(a, flip_down=flip))
        with stack, client(r) as c:
            c.sendall(A)
            assert recv_exactly(c, MSG) == A
            c.sendall(B)
            got, end = read_until_closed(c)
            assert t.connections[0]["done"].wait(WAIT)
            errors = [x["error"] for x in r.stats()["per_connection"]]
    assert end == "reset" and got == b""  # not a byte of the tampered reply frame
    assert any(e and "authentication" in e for e in errors), errors
    # The router tore down its ciphertext side, so the far gateway reset the target too.
    assert t.connections[0]["end"] == "reset"


def test_client_reset_is_not_forwarded_as_a_clean_end() -> None:
    # The plaintext source resets: the router must not send FINAL, so the far side resets.
    with target_server(echo=False) as t:
        stack, _, _, r = gateways(t.address, lambda a: relay(a))
        with stack:
            c = client(r)
            c.sendall(A)
            t.wait_bytes(MSG)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            assert t.connections[0]["done"].wait(WAIT)
    assert t.connections[0]["end"] == "reset"
    assert bytes(t.connections[0]["data"]) == A


def test_target_reset_is_not_forwarded_as_a_clean_end() -> None:
    # The decrypt side's plaintext source (the target) resets: no FINAL reply frame, so the
    # router resets its client instead of ending the reply cleanly.
    def resetting(c: socket.socket) -> None:
        c.recv(MSG)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

    srv = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: resetting(srv.accept()[0]), daemon=True).start()
    with srv:
        stack, _, _, r = gateways(srv.getsockname()[:2], lambda a: relay(a))
        with stack, client(r) as c:
            c.sendall(A)
            got, end = read_until_closed(c)
    assert (got, end) == (b"", "reset")


# --- 2. direction and freshness --------------------------------------------------------------


def _record_one_exchange(t: Target, mid: Relay, r: qeltrix_v6.GatewayServer) -> tuple[bytes, bytes]:
    with client(r) as c:
        c.sendall(A)
        assert recv_exactly(c, MSG) == A
        c.shutdown(socket.SHUT_WR)
        got, end = read_until_closed(c)
        assert (got, end) == (b"", "eof")  # a clean exchange ends cleanly
    assert t.connections[0]["done"].wait(WAIT)
    deadline = time.monotonic() + WAIT
    while len(mid.recorded[0][1]) < DOWN_PRE + HEADER_LEN + FRAME and time.monotonic() < deadline:
        time.sleep(0.01)
    up, down = mid.recorded[0]
    return bytes(up), bytes(down)


def _inject(d: qeltrix_v6.GatewayServer, msg1: bytes, stream: bytes) -> tuple[bytes, str]:
    """Open a new connection to the decrypt gateway, open a session with a recorded msg1 (the
    attacker cannot make one of its own) and send `stream`."""
    with socket.create_connection(d.address, timeout=WAIT) as s:
        if SESSION:
            s.sendall(msg1)
            assert len(recv_exactly(s, 32)) == 32  # the responder's fresh nonce
        with contextlib.suppress(OSError):
            s.sendall(stream)
        return read_until_closed(s)


def test_recorded_request_stream_replayed_on_a_new_connection_never_reaches_the_target() -> None:
    with target_server() as t:
        stack, d, mid, r = gateways(t.address, lambda a: relay(a))
        with stack:
            up, _ = _record_one_exchange(t, mid, r)
            got, _ = _inject(d, up[:UP_PRE], up[UP_PRE:])
            time.sleep(0.3)  # let a (wrongly) accepted replay reach the target
            errors = [x["error"] for x in d.stats()["per_connection"]]
    assert len(t.connections) == 1, "the replayed stream reached the target"
    assert got == b""  # not even a reply header
    assert errors[-1] and "authentication" in errors[-1], errors


def test_reply_stream_reflected_as_a_request_never_reaches_the_target() -> None:
    with target_server() as t:
        stack, d, mid, r = gateways(t.address, lambda a: relay(a))
        with stack:
            up, down = _record_one_exchange(t, mid, r)
            got, _ = _inject(d, up[:UP_PRE], down[DOWN_PRE:])
            time.sleep(0.3)
            errors = [x["error"] for x in d.stats()["per_connection"]]
    assert len(t.connections) == 1, "the reflected stream reached the target"
    assert got == b""
    assert errors[-1] and "authentication" in errors[-1], errors


def test_stream_vector_matches_the_product_and_the_reference_decoder(tmp_path: Path) -> None:
    v = {
        k: bytes.fromhex(x) if k.endswith("_hex") else x
        for k, x in json.loads((VECTORS / "stream" / "shared-key.json").read_text()).items()
    }
    key, nonce_i, nonce_r = v["key_hex"], v["nonce_i_hex"], v["nonce_r_hex"]
    initiator = _crypto.SharedKeySession(key, nonce=nonce_i)
    responder = _crypto.SharedKeySession(key, nonce=nonce_r)
    assert initiator.start() == v["msg1_hex"]
    assert responder.respond(v["msg1_hex"]) == nonce_r
    initiator.finish(nonce_r)
    assert initiator.secret == responder.secret == v["session_hex"] == ref.shared_key_session(key, nonce_i, nonce_r)
    cid = v["container_id_hex"]
    assert initiator.send_mk(cid) == responder.recv_mk(cid) == v["request_mk_hex"]
    assert responder.send_mk(cid) == initiator.recv_mk(cid) == v["reply_mk_hex"]
    # The request stream: the reference decoder reads it; in the other direction it fails.
    stream = v["stream_hex"]
    assert ref.decode_stream(stream, session=v["session_hex"], direction=1) == v["plaintext_hex"]
    with pytest.raises(ref.RefCorrupt):
        ref.decode_stream(stream, session=v["session_hex"], direction=2)
    # The product's keyring accepts it as a request, and stores it as a sink would.
    keyring = qeltrix_v6.gateway._Keyring(key, 1)
    header = stream[:HEADER_LEN]
    keyring.accept_stream(responder, header)
    with pytest.raises(qeltrix_v6.AuthenticationError):
        keyring.accept_stream(initiator, header)  # a request is never accepted as a reply
    (tmp_path / "s.part").write_bytes(keyring.storage_header(responder, header) + stream[HEADER_LEN:])
    info = qeltrix_v6.recover(tmp_path / "s.part", tmp_path / "s.qltx", key=key)
    assert info["complete"] and info["pt_len"] == len(v["plaintext_hex"])
    assert ref.decode((tmp_path / "s.qltx").read_bytes(), key=key) == v["plaintext_hex"]


# --- 3. pre-authentication limits --------------------------------------------------------------


@contextlib.contextmanager
def cli_gateway(
    *args: str, preexec: Callable[[], None] | None = None
) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int], list[str]]]:
    """`python -m qeltrix_v6 gateway ARGS` as a subprocess; yields it, its address and the
    stderr lines up to the listening line."""
    with running_cli("gateway", *args, ready=r"listening on (\S+):(\d+)", preexec=preexec) as (proc, m, lines):
        yield proc, (m.group(1), int(m.group(2))), lines


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def huge_header_declaration() -> bytes:
    """The 44-byte fixed part of a stream header that declares header_len = 1 MiB."""
    fixed = b"QLTXV6\r\n" + struct.pack("<HIHBBII", 1, 1 << 20, 0, 1, 0, 64 << 10, 0) + os.urandom(16) + b"\x01\x00"
    assert len(fixed) == 44
    return fixed


def test_a_thousand_peers_declaring_huge_headers_keep_the_gateway_small(key_file: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with target_server() as t, cli_gateway(
        "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{t.address[1]}",
        "--key-file", str(key_file), "--quiet",
    ) as (proc, addr, _):  # fmt: skip
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
        before = rss_mib(proc.pid)
        # A valid msg1 can be replayed by anyone who recorded one: it authenticates nothing.
        preamble = _crypto.SharedKeySession(K1).start() if SESSION else b""
        peers, peak = [], before
        try:
            for i in range(1000):
                s = socket.create_connection(addr, timeout=WAIT)
                with contextlib.suppress(OSError):
                    s.sendall(preamble + huge_header_declaration())
                peers.append(s)
                if i % 100 == 99:
                    peak = max(peak, rss_mib(proc.pid))
            for _ in range(20):
                peak = max(peak, rss_mib(proc.pid))
                time.sleep(0.05)
        finally:
            for s in peers:
                s.close()
        assert proc.poll() is None, "the gateway died"
        assert t.connections == []
    print(f"decrypt gateway VmRSS: {before:.0f} MiB before, {peak:.0f} MiB peak with 1000 hostile peers")
    assert peak < 200, f"{peak:.0f} MiB"


def test_silent_peers_are_dropped_after_the_handshake_timeout(key_file: Path) -> None:
    with target_server() as t, cli_gateway(
        "--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{t.address[1]}",
        "--key-file", str(key_file), "--handshake-timeout", "1", "--max-connections", "5",
    ) as (_proc, addr, _):  # fmt: skip
        peers = [socket.create_connection(addr, timeout=30) for _ in range(5)]
        peers[4].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # 27 bytes, then nothing
        for s in peers:
            # Dropped: an end of input or a reset; socket.timeout (30 s: held) fails the test.
            with s, contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
        # All five slots are free again: a real client gets through.
        with qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=addr, key=K1) as r, client(r) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            assert read_until_closed(c) == (b"hello", "eof")
        assert t.connections and bytes(t.connections[0]["data"]) == b"hello"


def _open_files_soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit")


def test_open_file_limit_is_raised_to_what_max_connections_needs(key_file: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for this test")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    with cli_gateway(
        "--mode", "reflect", "--listen", "127.0.0.1:0", "--key-file", str(key_file), "--max-connections", "1000",
        preexec=low_soft_limit,
    ) as (proc, _, _):  # fmt: skip
        assert _open_files_soft_limit(proc.pid) >= 2000


def test_too_low_hard_open_file_limit_lowers_max_connections_with_a_warning(key_file: Path) -> None:
    def low_hard_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with cli_gateway(
        "--mode", "reflect", "--listen", "127.0.0.1:0", "--key-file", str(key_file), "--max-connections", "1000",
        preexec=low_hard_limit,
    ) as (_proc, _, lines):  # fmt: skip
        text = "".join(lines)
        assert "open-file limit" in text and "allows only 96 connections" in text, text


# --- 4. sinks mark a cut stream INCOMPLETE ---------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "stored_pt_len"),
    [
        ({"up_limit": UP_PRE + HEADER_LEN + FRAME + 50}, MSG),  # cut mid-frame
        ({"up_limit": UP_PRE + HEADER_LEN + 2 * FRAME}, 2 * MSG),  # cut between frames
        ({"flip_up": UP_PRE + HEADER_LEN + FRAME + 104 + 50}, MSG),  # frame 1 fails authentication
    ],
    ids=["cut-mid-frame", "cut-at-frame-boundary", "bad-frame"],
)
def test_sink_marks_a_stream_without_final_incomplete(
    tmp_path: Path, key_file: Path, attack: dict[str, int], stored_pt_len: int
) -> None:
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    with (
        qeltrix_v6.GatewayServer("sink", "127.0.0.1:0", key=K1, sink_dir=sink_dir, block_size=64 << 10) as sink,
        relay(sink.address, **attack) as mid,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=mid.address, key=K1, block_size=64 << 10) as r,
        client(r) as c,
    ):
        c.sendall(A)
        mid.wait_up(UP_PRE + HEADER_LEN + FRAME)
        c.sendall(B)
        mid.wait_up(UP_PRE + HEADER_LEN + FRAME + 1)
        sent_c = send_or_reset(c, C)
        _, end = read_until_closed(c)
        end = sent_c or end
        assert end == "reset"
        deadline = time.monotonic() + WAIT
        while not list(sink_dir.glob("stream-*.qltx")) and time.monotonic() < deadline:
            time.sleep(0.05)
    (stored,) = sink_dir.glob("stream-*.qltx")
    out = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "info", "--json", "--key-file", str(key_file), str(stored)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["complete"] is False
    assert info["plaintext_len"] == stored_pt_len
