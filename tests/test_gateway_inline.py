"""The per-frame path after issue 12's last cuts: a frame's crypto run on the connection's own
task (no hand-off to the worker's batcher), SHA-256 from a copied context, and the frame's
random fields from a per-thread buffer of the OS CSPRNG. The bytes are the spec's (checked
against FORMAT.md sections 4-5 computed here with `cryptography` directly), no random field is
ever handed out twice (threads, a forked child), and many connections whose crypto runs
inline through a real gateway get back what they sent while one whose frames are tampered
with in transit is the only one cut."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from qeltrix_v6 import _core, _crypto
from test_gateway_attacks import cli_gateway, relay
from test_gateway_ops import crowd_pings, echo_server, ping

META, TAG = _crypto.META_FRAME_LEN, _crypto.TAG_LEN


def spec_frame(mk: bytes, cid: bytes, cipher: int, i: int, flags: int, pt: bytes, rnd: bytes) -> bytes:
    """The frame FORMAT.md sections 4 and 5 define, with `rnd` as cdk_salt || data_nonce ||
    meta_nonce, built without `_crypto`."""
    aead = AESGCM if cipher == _crypto.CIPHER_AES_256_GCM else ChaCha20Poly1305
    salt, data_nonce, meta_nonce = rnd[:16], rnd[16:28], rnd[28:40]
    h = hashes.Hash(hashes.SHA256())
    h.update(pt)
    digest = h.finalize()
    hk = lambda ikm, s, info: HKDF(hashes.SHA256(), 32, s, info).derive(ikm)  # noqa: E731
    cdk = hk(mk, salt, b"qeltrix-v6 cdk" + cid + struct.pack("<Q", i) + digest)
    k_meta = hk(mk, cid, b"qeltrix-v6 v6-c metadata")
    data_ct = aead(cdk).encrypt(data_nonce, pt, cid + struct.pack("<QIB", i, len(pt), flags))
    meta_pt = struct.pack("<QIB3x", i, len(pt), flags) + salt + data_nonce + digest
    return meta_nonce + aead(k_meta).encrypt(meta_nonce, meta_pt, cid) + data_ct


@pytest.mark.parametrize("cipher", [_crypto.CIPHER_AES_256_GCM, _crypto.CIPHER_CHACHA20_POLY1305])
@pytest.mark.parametrize("size", [0, 1, 64, 5000, 1 << 18])
def test_a_sealed_frame_is_the_spec_s_bytes(monkeypatch: pytest.MonkeyPatch, cipher: int, size: int) -> None:
    """Both sealers, the pack path's `seal_stream_frame` and the gateway core's frame crypto,
    write exactly FORMAT.md's frame for the random fields they drew."""
    mk, cid, rnd, pt = os.urandom(32), os.urandom(16), os.urandom(40), os.urandom(size)
    monkeypatch.setattr(_crypto, "_frame_random", lambda: rnd)
    k = _crypto.ContainerKeys(mk, cid, cipher)
    out = bytearray(META + size + TAG)
    flags = 1 if size == 0 else 0
    k.seal_stream_frame(9, flags, memoryview(bytearray(pt)), size, memoryview(out))
    assert bytes(out) == spec_frame(mk, cid, cipher, 9, flags, pt, rnd)
    frame = _core.gateway_seal_frame(k, 9, flags, pt)
    assert frame == spec_frame(mk, cid, cipher, 9, flags, pt, b"".join(random_fields(k, frame)))
    for f in (bytes(out), frame):
        meta_pt, opened = _core.gateway_open_frame(k, f)
        assert opened == pt and meta_pt[:8] == struct.pack("<Q", 9)


def random_fields(k: _crypto.ContainerKeys, frame: bytes | bytearray) -> tuple[bytes, bytes, bytes]:
    """`cdk_salt`, `data_nonce`, `meta_nonce` of a frame."""
    meta_pt = k.open_meta(memoryview(frame))
    return meta_pt[16:32], meta_pt[32:44], bytes(frame[:12])


def seal_gateway(k: _crypto.ContainerKeys, i: int) -> bytes:
    return _core.gateway_seal_frame(k, i, 0, b"abcd")


def seal_pack(k: _crypto.ContainerKeys, i: int) -> bytes:
    out = bytearray(META + 4 + TAG)
    k.seal_stream_frame(i, 0, memoryview(bytearray(b"abcd")), 4, memoryview(out))
    return bytes(out)


Sealer = Callable[[_crypto.ContainerKeys, int], bytes]


@pytest.mark.parametrize("seal", [seal_gateway, seal_pack])
def test_no_random_field_is_handed_out_twice_across_threads(seal: Sealer) -> None:
    k = _crypto.ContainerKeys(os.urandom(32), os.urandom(16), _crypto.CIPHER_AES_256_GCM)
    per_thread = 3 * _crypto._FRAME_RANDOM_BATCH + 5  # several refills of each thread's buffer
    seen: list[tuple[bytes, bytes, bytes]] = []
    lock = threading.Lock()

    def seal_many() -> None:
        mine = [random_fields(k, seal(k, i)) for i in range(per_thread)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=seal_many) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 6 * per_thread
    for field in range(3):
        values = [s[field] for s in seen]
        assert len(set(values)) == len(values)


@pytest.mark.parametrize("seal", [seal_gateway, seal_pack])
def test_a_forked_child_does_not_reuse_its_parent_s_random_fields(seal: Sealer) -> None:
    k = _crypto.ContainerKeys(os.urandom(32), os.urandom(16), _crypto.CIPHER_AES_256_GCM)
    seal(k, 0)  # the parent's buffer now holds the next frames' fields
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first frame, to the parent
        try:
            os.write(w, seal(k, 1))
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    parent_next = [random_fields(k, seal(k, 2 + i)) for i in range(_crypto._FRAME_RANDOM_BATCH)]
    assert len(child) == META + 4 + TAG
    child_fields = random_fields(k, child)
    assert all(child_fields[f] not in {p[f] for p in parent_next} for f in range(3))


def test_inline_crypto_for_many_connections_and_a_tampered_one_cut_alone(
    monkeypatch: pytest.MonkeyPatch, key_file: Path
) -> None:
    """A decrypt gateway whose connections all run their frames' crypto on their own tasks
    (`QELTRIX_GW_INLINE=always`; by default only a worker with at most 16 connections does):
    40 connections ping-pong in lockstep through one router while another connection, through a
    second router and an on-path relay that flips one bit of its request stream, is reset; the
    40 get back every byte and the decrypt gateway counts one failed connection."""
    monkeypatch.setenv("QELTRIX_GW_INLINE", "always")
    conns, rounds = 40, 25
    with (
        echo_server() as port,
        cli_gateway("--mode", "decrypt", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{port}",
                    "--key-file", str(key_file)) as (_, d_addr, _),
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d_addr, key=KEY) as r,
        relay(d_addr, flip_up=72 + 4096 + 2000) as mid,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=mid.address, key=KEY) as bad_r,
    ):  # fmt: skip
        tampered: list[str] = []

        def victim(start: threading.Barrier) -> None:
            with socket.create_connection(bad_r.address, timeout=60) as s:
                start.wait(30)
                try:
                    for i in range(200):  # 200 frames of 220 bytes: well past the flipped bit
                        msg = i.to_bytes(4, "little") + bytes(96)
                        if ping(s, msg) != msg:
                            tampered.append("wrong echo")
                            return
                    tampered.append("never cut")
                except (OSError, AssertionError) as e:
                    tampered.append(f"cut: {type(e).__name__}")

        errors = crowd_pings(r.address, conns, rounds, victim)
        assert not errors, errors[:5]
        assert len(tampered) == 1 and tampered[0].startswith("cut"), tampered
        assert r.stats()["failed"] == 0
        deadline = time.monotonic() + 10
        while bad_r.stats()["failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bad_r.stats()["failed"] == 1
