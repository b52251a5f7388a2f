"""Errors at the Rust/Python boundary: every failure reaches Python as the documented class
(qeltrix_v6.errors), arguments are validated before they reach Rust, a failing or lying
pipeline stage is an error and not a hang, and no hostile argument to a public function gets
anything but a documented exception out (never pyo3's PanicException, a BaseException)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import ARGON2_SMALL, KEY, OTHER_KEY, make_plaintext, pack_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qeltrix_v6 import _core, errors

PT = make_plaintext(5 * 64 + 3, "boundary")
# Liveness: a stage that hung instead of failing stops the test here.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def box() -> bytes:
    return pack_bytes(PT, block_size=64)


def closed_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


# --- the mapping of each failure to its class -------------------------------------------


def test_error_mapping(box: bytes) -> None:
    with pytest.raises(errors.MalformedError):
        qeltrix_v6.seek_extract(io.BytesIO(b"not a container" * 10), 0, 1, key=KEY)
    with pytest.raises(errors.TruncatedError):
        qeltrix_v6.seek_extract(io.BytesIO(box[:-5]), 0, 1, key=KEY)
    damaged = bytearray(box)
    damaged[len(damaged) // 2] ^= 1
    with pytest.raises(errors.AuthenticationError):
        qeltrix_v6.unpack(io.BytesIO(bytes(damaged)), io.BytesIO(), key=KEY)
    with pytest.raises(errors.WrongKeyError):
        qeltrix_v6.seek_extract(io.BytesIO(box), 0, 1, key=OTHER_KEY)
    with pytest.raises(errors.LimitExceededError):
        header = _core.Reader(io.BytesIO(box)).header_bytes
        _core.pack_stream(io.BytesIO(b""), io.BytesIO(), None, header, 1, 0, bytes(16))
    with pytest.raises(errors.QeltrixIOError):
        _core.Reader(closed_fd())


@pytest.mark.parametrize(
    ("fd", "cls"),
    [(-1, ValueError), (-5, ValueError), (2**40, ValueError), (True, TypeError), (False, TypeError)],
)
def test_descriptors_are_validated(fd: Any, cls: type[Exception]) -> None:
    with pytest.raises(cls, match=r"descriptor|bool"):
        qeltrix_v6.pack(fd, io.BytesIO(), key=KEY)
    with pytest.raises(cls, match=r"descriptor|bool"):
        qeltrix_v6.pack(io.BytesIO(PT), fd, key=KEY)
    with pytest.raises(cls, match=r"descriptor|bool"):
        _core.Reader(fd)
    with pytest.raises(cls, match=r"descriptor|bool"):
        qeltrix_v6.unpack(fd, io.BytesIO(), key=KEY)


def test_closed_descriptor_is_an_io_error(box: bytes) -> None:
    with pytest.raises(errors.QeltrixIOError, match="descriptor"):
        qeltrix_v6.pack(closed_fd(), io.BytesIO(), key=KEY)
    with pytest.raises(errors.QeltrixIOError, match="descriptor"):
        qeltrix_v6.unpack(io.BytesIO(box), closed_fd(), key=KEY)


# --- pipeline stages that fail or lie -----------------------------------------------------


class FailingSource(io.RawIOBase):
    """Gives `good` reads of data, then raises."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.left == 0:
            raise OSError("the disk went away")
        self.left -= 1
        n = min(len(b), 16)
        b[:n] = b"x" * n
        return n


class LyingSource:
    """readinto claims more bytes than it was given (or a value that is not a count)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def readinto(self, b: Any) -> object:
        return self.answer


class LyingSink:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def write(self, b: Any) -> object:
        return self.answer


@pytest.mark.parametrize("workers", [1, 4])
def test_failing_source_stops_every_stage(workers: int) -> None:
    threads = threading.active_count()
    with pytest.raises(OSError, match="disk went away"):
        qeltrix_v6.pack(FailingSource(good=50), io.BytesIO(), key=KEY, block_size=64, workers=workers)
    assert threading.active_count() == threads  # every stage thread ended


@pytest.mark.parametrize("answer", [10**9, -1, "3", 2.5])
def test_lying_source_is_an_error_not_a_panic(answer: object) -> None:
    with pytest.raises((errors.QeltrixIOError, TypeError), match="readinto"):
        qeltrix_v6.pack(LyingSource(answer), io.BytesIO(), key=KEY, block_size=64)


@pytest.mark.parametrize("answer", [10**9, -1, "3"])
def test_lying_sink_is_an_error_not_a_panic(box: bytes, answer: object) -> None:
    with pytest.raises((errors.QeltrixIOError, TypeError), match="write"):
        qeltrix_v6.pack(io.BytesIO(PT), LyingSink(answer), key=KEY, block_size=64)
    with pytest.raises((errors.QeltrixIOError, TypeError), match="write"):
        qeltrix_v6.unpack(io.BytesIO(box), LyingSink(answer), key=KEY)


@pytest.mark.parametrize("answer", [10**9, -1])
def test_lying_random_source_is_an_error_not_a_panic(box: bytes, answer: object) -> None:
    class Lying(io.BytesIO):
        def readinto(self, b: Any) -> Any:
            return answer

    with pytest.raises((errors.QeltrixIOError, TypeError), match="readinto"):
        qeltrix_v6.seek_extract(Lying(box), 0, 10, key=KEY)


def test_progress_callback_error_is_raised(box: bytes) -> None:
    def progress(done: int, total: int | None) -> None:
        raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):
        qeltrix_v6.unpack(io.BytesIO(box), io.BytesIO(), key=KEY, progress=progress)


# --- hostile arguments to every public function ------------------------------------------

DOCUMENTED = (errors.QeltrixError, TypeError, ValueError)
# Integers that cannot be an open descriptor of this process (so nothing real is read or
# written): negative, far beyond any descriptor limit, or just closed (see the test body).
FD_LIKE = st.one_of(st.integers(max_value=-1), st.integers(min_value=10**7, max_value=2**80))
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    FD_LIKE,
    st.floats(allow_nan=True),
    st.text(alphabet="abc.", max_size=4),  # relative names only: the test runs in tmp_path
    st.binary(max_size=40),
    st.lists(st.integers(-3, 3), max_size=3),
    st.just(object()),
    st.just("closed-fd"),
)


def _fix(value: Any) -> Any:
    return closed_fd() if value == "closed-fd" else value


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fn=st.sampled_from(["pack", "unpack", "seek_extract", "open_rb", "open_wb", "recover"]),
    src=HOSTILE,
    dst=HOSTILE,
    key=st.one_of(st.just(KEY), HOSTILE),
    number=st.one_of(st.none(), st.integers(-(2**70), 2**70), st.booleans(), st.floats(), st.text(max_size=3)),
    good_src=st.booleans(),
)
def test_hostile_arguments_raise_documented_errors(
    box: bytes,
    work_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    fn: str,
    src: Any,
    dst: Any,
    key: Any,
    number: Any,
    good_src: bool,
) -> None:
    monkeypatch.chdir(work_dir)
    src, dst, key = _fix(src), _fix(dst), _fix(key)
    container = io.BytesIO(box)
    calls = {
        "pack": lambda: qeltrix_v6.pack(
            io.BytesIO(PT) if good_src else src, dst, key=key, block_size=number, kdf_params=ARGON2_SMALL
        ),
        "unpack": lambda: qeltrix_v6.unpack(container if good_src else src, dst, key=key, workers=number),
        "seek_extract": lambda: qeltrix_v6.seek_extract(container if good_src else src, number, number, key=key),
        "open_rb": lambda: qeltrix_v6.open(container if good_src else src, "rb", key=key, cache_blocks=number),
        "open_wb": lambda: qeltrix_v6.open(dst, "wb", key=key, block_size=number).close(),
        "recover": lambda: qeltrix_v6.recover(src, dst, key=key),
    }
    try:
        result = calls[fn]()
    except DOCUMENTED:
        return
    except BaseException as e:  # PanicException is a BaseException
        raise AssertionError(f"{fn} raised the undocumented {type(e).__module__}.{type(e).__name__}: {e}") from e
    if isinstance(result, io.IOBase):
        result.close()


def test_server_refuses_an_unloaded_reader(box: bytes, tmp_path: Path) -> None:
    """An opener that hands back a Reader without its index is a 500, not an empty file."""
    import urllib.error
    import urllib.request

    (tmp_path / "a.bin.qltx").write_bytes(box)
    lines: list[tuple[str, str]] = []
    core = _core.SeekServerCore(
        str(tmp_path),
        lambda path: _core.Reader(io.BytesIO(Path(path).read_bytes())),
        lambda level, line: lines.append((level, line)),
    )
    try:
        host, port = core.address
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{host}:{port}/a.bin", timeout=30)
        assert e.value.code == 500
        assert any("not loaded" in line for _, line in lines)
    finally:
        core.stop()


# --- buffers Rust holds (rust/qeltrix-py/src/io.rs, PyBuf) ---------------------------------


class ResizingSource:
    """A source that tries to resize the buffer Rust reads into (through the memoryview it was
    given): Rust holds a buffer export, so CPython refuses with BufferError."""

    def __init__(self) -> None:
        self.seen: list[type] = []

    def readinto(self, b: Any) -> int:
        self.seen.append(type(b))
        owner = b.obj
        b.release()  # even with the view Python was given released, Rust's export remains
        owner.clear()
        return 0


def test_resizing_a_buffer_rust_holds_raises_buffer_error() -> None:
    src = ResizingSource()
    with pytest.raises(BufferError):
        qeltrix_v6.pack(src, io.BytesIO(), key=KEY, block_size=64)
    assert src.seen == [memoryview]


def test_crypto_callbacks_receive_memoryviews(box: bytes) -> None:
    """The buffers handed to ContainerKeys are memoryviews whose owner cannot be resized."""
    from qeltrix_v6 import _crypto

    seen: list[str] = []
    original = _crypto.ContainerKeys.open_meta

    def open_meta(self: Any, inbuf: Any) -> bytes:
        try:
            inbuf.obj.extend(b"x")
        except BufferError:
            seen.append(type(inbuf).__name__)
        return original(self, inbuf)

    mp = pytest.MonkeyPatch()
    mp.setattr(_crypto.ContainerKeys, "open_meta", open_meta)
    try:
        assert qeltrix_v6.seek_extract(io.BytesIO(box), 0, 10, key=KEY) == PT[:10]
    finally:
        mp.undo()
    assert seen and set(seen) == {"memoryview"}


@pytest.mark.parametrize("value", [1e300, float("inf")])
def test_server_seconds_out_of_range_are_value_errors(tmp_path: Path, value: float) -> None:
    """Duration::from_secs_f64 panics on these; the servers refuse them as ValueError."""
    for name in ("header_timeout", "idle_timeout"):
        with pytest.raises(ValueError, match=name):
            _core.SeekServerCore(str(tmp_path), lambda path: None, None, **{name: value})
    for name in ("flush_delay", "idle_timeout", "connect_timeout", "stats_interval", "handshake_timeout"):
        with pytest.raises(ValueError, match=name):
            _core.GatewayCore("reflect", "127.0.0.1", 0, object(), **{name: value})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"port": -1}, ValueError),
        ({"port": 70000}, ValueError),
        ({"port": True}, TypeError),
        ({"port": "80"}, TypeError),
        ({"workers": -1}, ValueError),
        ({"max_connections": -5}, ValueError),
        ({"max_connections_per_client": 0}, ValueError),
    ],
)
def test_server_counts_and_ports_are_checked(tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]) -> None:
    """Negative or huge counts and ports were pyo3 OverflowErrors, and True was port 1."""
    with pytest.raises(error, match=next(iter(kwargs))):
        qeltrix_v6.SeekServer(tmp_path, key=KEY, **kwargs)
    if "max_connections" in kwargs:
        with pytest.raises(error, match="max_connections"):
            qeltrix_v6.GatewayServer("reflect", "127.0.0.1:0", key=KEY, **kwargs)
    if "port" in kwargs and isinstance(kwargs["port"], int) and not isinstance(kwargs["port"], bool):
        with pytest.raises(error, match=r"(?i)port"):
            qeltrix_v6.GatewayServer("reflect", f"127.0.0.1:{kwargs['port']}", key=KEY)


# One hostile parameter at a time, every other argument valid, so each reaches as deep as it
# can: (function, parameter, valid arguments).
ONE_AT_A_TIME: list[tuple[str, str]] = [
    ("pack", "src"),
    ("pack", "dst"),
    ("pack", "key"),
    ("pack", "block_size"),
    ("pack", "workers"),
    ("pack", "cipher"),
    ("pack", "permute"),
    ("pack", "progress"),
    ("unpack", "src"),
    ("unpack", "dst"),
    ("unpack", "key"),
    ("unpack", "workers"),
    ("unpack", "progress"),
    ("seek_extract", "src"),
    ("seek_extract", "offset"),
    ("seek_extract", "length"),
    ("seek_extract", "key"),
    ("seek_extract", "signers"),
    ("open_rb", "src"),
    ("open_rb", "cache_blocks"),
    ("open_rb", "max_kdf_memory"),
    ("open_rb", "seek"),
    ("open_wb", "dst"),
    ("open_wb", "block_size"),
    ("recover", "src"),
    ("recover", "dst"),
]
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([-1, 0, 1, 2**32, 2**63, 2**64, 2**64 - 1]), st.floats()
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(ONE_AT_A_TIME), value=st.one_of(HOSTILE, NUMBERS))
def test_one_hostile_argument_raises_documented_errors(
    box: bytes, work_dir: Path, monkeypatch: pytest.MonkeyPatch, case: tuple[str, str], value: Any
) -> None:
    monkeypatch.chdir(work_dir)
    fn, param = case
    value = _fix(value)
    (work_dir / "box.qltx").write_bytes(box)
    kw: dict[str, Any] = {"key": KEY}
    if fn == "pack":
        args: dict[str, Any] = {"src": io.BytesIO(PT), "dst": io.BytesIO(), "block_size": 64}
        args.update(kw)
        args[param] = value

        def call() -> object:
            return qeltrix_v6.pack(**args)
    elif fn == "unpack":
        args = {"src": io.BytesIO(box), "dst": io.BytesIO(), **kw, param: value}

        def call() -> object:
            return qeltrix_v6.unpack(**args)
    elif fn == "seek_extract":
        args = {"src": io.BytesIO(box), "offset": 3, "length": 10, **kw, param: value}

        def call() -> object:
            return qeltrix_v6.seek_extract(**args)
    elif fn == "open_rb":
        args = {"path_or_file": io.BytesIO(box), **kw}
        if param == "src":
            args["path_or_file"] = value
        elif param != "seek":
            args[param] = value

        def call() -> object:
            with qeltrix_v6.open(**args) as f:
                if param == "seek":
                    f.seek(value)
                return f.read(7)
    elif fn == "open_wb":
        args = {"path_or_file": io.BytesIO(), "mode": "wb", "block_size": 64, **kw}
        args["path_or_file" if param == "dst" else param] = value

        def call() -> object:
            with qeltrix_v6.open(**args) as w:
                return w.write(PT)
    else:
        args = {"src": "box.qltx", "dst": "out.qltx", "overwrite": True, **kw, param: value}

        def call() -> object:
            return qeltrix_v6.recover(**args)

    try:
        call()
    except DOCUMENTED:
        return
    except BaseException as e:  # PanicException is a BaseException
        raise AssertionError(f"{fn}({param}={value!r}) raised {type(e).__module__}.{type(e).__name__}: {e}") from e
