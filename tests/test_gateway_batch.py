"""The gateway core's frame crypto (issue 12): a worker seals or opens every frame ready on it,
of one connection or many, under one interpreter-lock acquisition, making the `cryptography`
calls itself. Its frames open with the container reader's code and it opens the pack path's
frames; a tampered frame, or one under another stream's keys, fails authentication; and many
interactive connections at once (which is when frames batch) plus a bulk one through a real
pair get back exactly what they sent."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading

import pytest
import qeltrix_v6
from qeltrix_v6 import _core, _crypto
from qeltrix_v6.errors import AuthenticationError, TruncatedError
from test_gateway_ops import crowd_pings, echo_server, ping

META, TAG = _crypto.META_FRAME_LEN, _crypto.TAG_LEN


def keys(cipher: int = _crypto.CIPHER_AES_256_GCM) -> _crypto.ContainerKeys:
    return _crypto.ContainerKeys(os.urandom(32), os.urandom(16), cipher)


def sealed(k: _crypto.ContainerKeys, i: int, pt: bytes, flags: int = 0) -> bytearray:
    out = bytearray(META + len(pt) + TAG)
    k.seal_stream_frame(i, flags, memoryview(bytearray(pt)), len(pt), memoryview(out))
    return out


def reader_open(k: _crypto.ContainerKeys, frame: bytes) -> tuple[int, int, bytes]:
    """A frame opened as the container reader opens a block: `open_meta`, then `open_block`."""
    meta_pt = k.open_meta(memoryview(frame))
    i, n, flags = struct.unpack_from("<QIB", meta_pt)
    out = bytearray(n)
    k.open_block(i, n, flags, meta_pt[16:32], meta_pt[32:44], meta_pt[44:76], memoryview(frame), memoryview(out))
    return i, flags, bytes(out)


@pytest.mark.parametrize("cipher", [_crypto.CIPHER_AES_256_GCM, _crypto.CIPHER_CHACHA20_POLY1305])
def test_the_gateway_core_seals_what_the_reader_opens_and_opens_what_the_pack_path_seals(cipher: int) -> None:
    k = keys(cipher)
    pts = [b"x", os.urandom(1000), b"", os.urandom(70_000)]
    for i, pt in enumerate(pts):
        flags = _core.META_FLAG_FINAL if not pt else 0
        frame = _core.gateway_seal_frame(k, i, flags, pt)
        assert len(frame) == META + len(pt) + TAG
        assert reader_open(k, frame) == (i, flags, pt)
        meta_pt, opened = _core.gateway_open_frame(k, bytes(sealed(k, i + 7, pt, flags)))
        assert opened == pt and struct.unpack_from("<QIB", meta_pt) == (i + 7, len(pt), flags)


def test_a_tampered_frame_or_another_stream_s_keys_fail_and_a_partial_frame_waits() -> None:
    good, other = keys(), keys()
    frame = _core.gateway_seal_frame(good, 4, 0, b"a" * 50)
    data_flip, meta_flip = bytearray(frame), bytearray(frame)
    data_flip[META + 10] ^= 1  # one bit of data_ct, in transit
    meta_flip[20] ^= 1  # one bit of meta_ct
    with pytest.raises(AuthenticationError, match="block 4 failed authentication"):
        _core.gateway_open_frame(good, bytes(data_flip))
    for k, f in ((good, bytes(meta_flip)), (other, frame)):
        with pytest.raises(AuthenticationError, match="block metadata failed authentication"):
            _core.gateway_open_frame(k, f)
    # Data not all arrived yet: the metadata only, the data left for later.
    meta_pt, opened = _core.gateway_open_frame(good, frame[: META + 5])
    assert opened is None and struct.unpack_from("<QI", meta_pt) == (4, 50)
    with pytest.raises(TruncatedError):
        _core.gateway_open_frame(good, frame[: META - 1])
    # The frame still opens whole afterwards: a failure leaves the keys as they were.
    assert _core.gateway_open_frame(good, frame)[1] == b"a" * 50


def test_many_interactive_connections_and_a_bulk_one_at_once_through_a_pair() -> None:
    """50 connections ping-pong small messages in lockstep (frames of many connections are ready
    on a worker together, so they are sealed and opened in batches) while one connection moves
    24 MiB; every byte comes back in order."""
    conns, rounds = 50, 30
    with (
        echo_server() as port,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=("127.0.0.1", port), key=bytes(32)) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, key=bytes(32)) as r,
    ):
        bulk = os.urandom(1 << 20) * 24
        got_bulk: list[str] = []

        def bulk_flow(start: threading.Barrier) -> None:
            with socket.create_connection(r.address, timeout=60) as s:
                start.wait(30)
                sender = threading.Thread(target=s.sendall, args=(bulk,))
                sender.start()
                h, n = hashlib.sha256(), 0
                while n < len(bulk) and (d_ := s.recv(1 << 20)):
                    h.update(d_)
                    n += len(d_)
                sender.join(60)
                got_bulk.append(h.hexdigest())

        errors = crowd_pings(r.address, conns, rounds, bulk_flow)
        assert not errors, errors[:5]
        assert got_bulk == [hashlib.sha256(bulk).hexdigest()]
        st = r.stats()
        assert st["failed"] == 0


@pytest.mark.parametrize("size", [1, 16 << 10, (16 << 10) + 1, 256 << 10, (256 << 10) + 7])
def test_reads_at_the_buffer_growth_boundaries_arrive_whole(size: int) -> None:
    """A worker's read buffer starts small and grows for bulk flows: writes of exactly its
    first size, one more byte, and a whole block come through whole."""
    data = os.urandom(size)
    with (
        echo_server() as port,
        qeltrix_v6.GatewayServer("decrypt", "127.0.0.1:0", target=("127.0.0.1", port), key=bytes(32)) as d,
        qeltrix_v6.GatewayServer("router", "127.0.0.1:0", target=d.address, key=bytes(32)) as r,
        socket.create_connection(r.address, timeout=30) as s,
    ):
        for _ in range(3):
            assert ping(s, data) == data
