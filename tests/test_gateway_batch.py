"""Batched frame crypto (issue 12): a gateway worker seals or opens every frame ready on it, of
one connection or many, in one Python call. Each frame's result is its own (a frame that fails
authentication fails its connection only), a batch seals the same bytes the one-frame call
does, and many interactive connections at once (which is when frames batch) plus a bulk one
through a real pair get back exactly what they sent."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest
import qeltrix_v6
from qeltrix_v6 import _crypto
from qeltrix_v6.errors import AuthenticationError
from test_gateway_ops import crowd_pings, echo_server, ping

META, TAG = _crypto.META_FRAME_LEN, _crypto.TAG_LEN


def keys() -> _crypto.ContainerKeys:
    return _crypto.ContainerKeys(os.urandom(32), os.urandom(16), _crypto.CIPHER_AES_256_GCM)


def sealed(k: _crypto.ContainerKeys, i: int, pt: bytes, flags: int = 0) -> bytearray:
    out = bytearray(META + len(pt) + TAG)
    k.seal_stream_frame(i, flags, memoryview(bytearray(pt)), len(pt), memoryview(out))
    return out


def test_a_batch_seals_what_one_frame_calls_open_and_opens_what_they_seal() -> None:
    ka, kb = keys(), keys()
    pts = [b"x", os.urandom(1000), b"", os.urandom(70_000)]
    outs = [bytearray(META + len(p) + TAG) for p in pts]
    jobs = [
        (k, i, _crypto._core.META_FLAG_FINAL if not p else 0, memoryview(bytearray(p)), len(p), memoryview(o))
        for i, (k, p, o) in enumerate(zip([ka, kb, ka, kb], pts, outs, strict=True))
    ]
    assert _crypto.seal_stream_frames(jobs) == [None] * 4
    for (k, i, _f, _in, n, _out), frame, pt in zip(jobs, outs, pts, strict=True):
        plain = bytearray(max(n, 1))
        meta_pt, opened = k.open_stream_frame(memoryview(frame), len(frame), memoryview(plain))
        assert opened and bytes(plain[:n]) == pt and int.from_bytes(meta_pt[:8], "little") == i
    # And the other way: frames sealed one by one open as one batch.
    frames = [sealed(ka, 0, b"first"), sealed(kb, 7, b"second" * 100)]
    plains = [bytearray(16), bytearray(600)]
    got = _crypto.open_stream_frames(
        [(k, memoryview(f), len(f), memoryview(p)) for k, f, p in zip([ka, kb], frames, plains, strict=True)]
    )
    assert [r[1] for r in got if isinstance(r, tuple)] == [True, True]
    assert bytes(plains[0][:5]) == b"first" and bytes(plains[1]) == b"second" * 100


def test_a_frame_that_fails_in_a_batch_fails_alone() -> None:
    good, bad, other = keys(), keys(), keys()
    frames = [sealed(good, 0, b"a" * 50), sealed(bad, 0, b"b" * 50), sealed(good, 1, b"c" * 50)]
    frames[1][META + 10] ^= 1  # one bit of data_ct, in transit
    plains = [bytearray(50) for _ in frames]
    jobs = [
        (good, memoryview(frames[0]), len(frames[0]), memoryview(plains[0])),
        (bad, memoryview(frames[1]), len(frames[1]), memoryview(plains[1])),
        (other, memoryview(frames[2]), len(frames[2]), memoryview(plains[2])),  # the wrong stream's keys
        (good, memoryview(frames[2]), len(frames[2]), memoryview(plains[2])),
    ]
    got = _crypto.open_stream_frames(jobs)
    assert isinstance(got[1], AuthenticationError) and isinstance(got[2], AuthenticationError)
    assert isinstance(got[0], tuple) and isinstance(got[3], tuple)
    assert bytes(plains[0]) == b"a" * 50 and bytes(plains[2]) == b"c" * 50
    # A frame whose data has not all arrived: its metadata only, its data left for later.
    part = _crypto.open_stream_frames([(good, memoryview(frames[0]), META + 5, memoryview(bytearray(50)))])
    assert isinstance(part[0], tuple) and part[0][1] is False
    # A seal that cannot be done (the output is too small) is that job's error only.
    res = _crypto.seal_stream_frames(
        [
            (good, 2, 0, memoryview(bytearray(b"ok")), 2, memoryview(bytearray(META + 2 + TAG))),
            (good, 3, 0, memoryview(bytearray(100)), 100, memoryview(bytearray(10))),
        ]
    )
    assert res[0] is None and isinstance(res[1], Exception)


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
