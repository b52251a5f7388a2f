"""Shared fixtures and hypothesis profiles of the Qeltrix V6 test suite.

Profiles (select with ``HYPOTHESIS_PROFILE``):

- ``ci`` (default): 40 examples per property, no deadline.
- ``slow``: 1000 examples per property, for a long fuzzing run.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "slow",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Small, fast KDF parameters (still inside the limits of FORMAT.md section 9).
ARGON2_SMALL = {"t_cost": 1, "m_cost_kib": 64, "lanes": 1}
PBKDF2_SMALL = {"iterations": 1000}

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def require(tool: str) -> str:
    """The path of an external tool the test drives as a real client. A missing tool fails
    in CI (``.ci/run`` installs them all) and skips elsewhere."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; .ci/run should have installed it")
        pytest.skip(f"{tool} is not installed")
    return path


def assert_one_error(stderr: str | bytes, *fragments: str) -> str:
    """Exactly one ``qeltrix: error:`` line, at most one ``hint:`` line, no traceback."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert 1 <= len(lines) <= 2, text
    assert lines[0].startswith("qeltrix: error: "), text
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), text
    for fragment in fragments:
        assert fragment in lines[0], text
    return lines[0]


def make_plaintext(n: int, seed: int | str = 0) -> bytes:
    """``n`` deterministic pseudorandom bytes."""
    return random.Random(f"{seed}/{n}").randbytes(n)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """``KEY`` in a key file readable only by its owner (as the CLI wants it)."""
    p = tmp_path / "k.key"
    p.write_bytes(KEY)
    p.chmod(0o600)
    return p


def pack_bytes(pt: bytes, **kwargs: object) -> bytes:
    """Pack ``pt`` in memory and return the container bytes (``key=KEY`` unless a credential is given)."""
    import qeltrix_v6

    if "key" not in kwargs and "passphrase" not in kwargs:
        kwargs["key"] = KEY
    out = io.BytesIO()
    result = qeltrix_v6.pack(io.BytesIO(pt), out, **kwargs)  # type: ignore[arg-type]
    c = out.getvalue()
    assert result.container_len == len(c)
    assert result.pt_len == len(pt)
    return c


def unpack_bytes(c: bytes, **kwargs: object) -> bytes:
    """Unpack container bytes in memory and return the plaintext (``key=KEY`` unless a credential is given)."""
    import qeltrix_v6

    if "key" not in kwargs and "passphrase" not in kwargs:
        kwargs["key"] = KEY
    out = io.BytesIO()
    n = qeltrix_v6.unpack(io.BytesIO(c), out, **kwargs)  # type: ignore[arg-type]
    assert n == len(out.getvalue())
    return out.getvalue()


@pytest.fixture(scope="session")
def key() -> bytes:
    """A fixed 32-byte key."""
    return KEY


@pytest.fixture(scope="session")
def other_key() -> bytes:
    """Another 32-byte key, which does not open containers made with ``key``."""
    return OTHER_KEY


@pytest.fixture(scope="session")
def packer() -> Callable[..., bytes]:
    """``packer(pt, **pack_kwargs) -> container bytes`` (in memory, ``key=KEY`` by default)."""
    return pack_bytes


@pytest.fixture(scope="session")
def unpacker() -> Callable[..., bytes]:
    """``unpacker(container, **kwargs) -> plaintext`` (in memory, ``key=KEY`` by default)."""
    return unpack_bytes


@pytest.fixture(scope="session")
def small_container() -> tuple[bytes, bytes]:
    """``(plaintext, container)``: 10 full 64-byte blocks, permuted, under ``KEY``."""
    pt = make_plaintext(640, "small")
    return pt, pack_bytes(pt, block_size=64)


@contextlib.contextmanager
def running_cli(
    *args: str, ready: str, preexec: Callable[[], None] | None = None
) -> Iterator[tuple[subprocess.Popen[str], re.Match[str], list[str]]]:
    """Start `python -m qeltrix_v6 ARGS` (a server), wait for the stderr line matching `ready`;
    yield the process, that match and the stderr lines (later ones are appended as they come);
    interrupt it (Ctrl-C) at the end.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("QELTRIX_PASSPHRASE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qeltrix_v6", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=preexec,
    )  # fmt: skip
    assert proc.stderr is not None
    timer = threading.Timer(30, proc.kill)
    timer.start()
    lines: list[str] = []
    match = None
    for line in proc.stderr:
        lines.append(line)
        if match := re.search(ready, line):
            break
    timer.cancel()
    assert match, "".join(lines)

    def pump(stream: io.TextIOBase) -> None:  # keep draining; later lines stay readable in `lines`
        for line in stream:
            lines.append(line)

    threading.Thread(target=pump, args=(proc.stderr,), daemon=True).start()
    ok = False
    try:
        yield proc, match, lines
        ok = True
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            # A server that does not stop on Ctrl-C is a bug, not something to clean up after
            # (unless the test failed already: that failure is the one to see).
            if ok:
                raise AssertionError(f"`qeltrix {args[0]}` did not stop within 15 s of Ctrl-C") from None


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for ``localhost`` in ``directory``: (cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem, key_pem = directory / "cert.pem", directory / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_pem, key_pem


def http_request(
    address: tuple[str, int],
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers with lower-case names, body)."""
    import http.client

    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
