"""The reader decides how much KDF work a hostile header may cost (FORMAT.md sections 8 and 9).

A container holds at most one passphrase stanza, Argon2id's ``t_cost * m_cost_kib`` is bounded,
and a reader can lower the memory ceiling (``max_kdf_memory=`` / ``--max-kdf-memory``). Each
check runs in step 2, before any KDF: these tests show it by the memory a run used (a KDF at the
limits needs 1 GiB), never by timing.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import qeltrix_v6
import reference_decoder as ref
from qeltrix_v6 import LimitExceededError

TESTS = Path(__file__).resolve().parent
PW = "correct horse battery staple"


def argon2id_body(t_cost: int, m_cost_kib: int, lanes: int) -> bytes:
    """A syntactically valid argon2id stanza body with the given parameters (FORMAT.md 3.1)."""
    return os.urandom(16) + struct.pack("<III", t_cost, m_cost_kib, lanes) + os.urandom(12 + 48)


def pbkdf2_body(iterations: int) -> bytes:
    return os.urandom(16) + struct.pack("<I", iterations) + os.urandom(12 + 48)


def with_stanzas(stanzas: list[tuple[int, bytes]]) -> bytes:
    """A container with a key stanza plus ``stanzas`` (the reference writer keeps raw stanzas)."""
    return ref.encode(b"hello", key=bytes(32), block_size=4096, extra_stanzas=stanzas)


def test_sixty_four_passphrase_stanzas_fail_before_any_kdf(tmp_path: Path) -> None:
    """The attack of issue 9: 64 Argon2id stanzas at the old limits (t=16, 1 GiB) made one
    ``verify --passphrase-file`` run for many minutes at 1 GiB. Now the header is refused in
    step 2: the process never grows by anything like one KDF's memory."""
    c = tmp_path / "bomb.qltx"
    c.write_bytes(with_stanzas([(ref.KIND_ARGON2ID, argon2id_body(2, 1 << 20, 4))] * 63))
    pw = tmp_path / "pw"
    pw.write_text(PW + "\n")
    probe = (
        "import resource, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'qeltrix_v6', 'verify', '--passphrase-file', {str(pw)!r}, "
        f"{str(c)!r}], capture_output=True, text=True)\n"
        "print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        "sys.stderr.write(r.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    code, rss_mib = map(int, r.stdout.split())
    assert code == 7, r.stderr  # malformed: limit exceeded (ExitCode.NOT_A_CONTAINER)
    assert "passphrase stanzas" in r.stderr and "Traceback" not in r.stderr
    assert rss_mib < 400, f"verify grew to {rss_mib} MiB: a KDF ran"


@pytest.mark.parametrize(
    "stanzas",
    [
        [(ref.KIND_ARGON2ID, argon2id_body(1, 64, 1)), (ref.KIND_ARGON2ID, argon2id_body(1, 64, 1))],
        [(ref.KIND_ARGON2ID, argon2id_body(1, 64, 1)), (ref.KIND_PBKDF2, pbkdf2_body(1000))],
        [(ref.KIND_PBKDF2, pbkdf2_body(1000)), (ref.KIND_PBKDF2, pbkdf2_body(1000))],
    ],
    ids=["argon2id-twice", "argon2id-and-pbkdf2", "pbkdf2-twice"],
)
def test_more_than_one_passphrase_stanza_is_refused_by_every_reader(stanzas: list[tuple[int, bytes]]) -> None:
    """Cheap stanzas are refused too: 64 of them would be 64 passphrase guesses per file, and
    "wrong key" versus "corrupt" would tell which one matched (a guessing oracle)."""
    c = with_stanzas(stanzas)
    for creds in ({"passphrase": PW}, {"key": bytes(32)}):
        with pytest.raises(LimitExceededError, match="passphrase stanzas"):
            qeltrix_v6.seek_extract(io.BytesIO(c), 0, 5, **creds)  # type: ignore[arg-type]
    with pytest.raises(ref.RefMalformed):
        ref.parse_header(c)


@pytest.mark.parametrize(
    ("t_cost", "m_cost_kib"),
    [(3, 1 << 20), (16, 1 << 18), (16, (1 << 17) + 8)],
    ids=["t3-1GiB", "t16-256MiB", "t16-just-over"],
)
def test_argon2id_work_over_the_limit_is_refused(t_cost: int, m_cost_kib: int) -> None:
    c = with_stanzas([(ref.KIND_ARGON2ID, argon2id_body(t_cost, m_cost_kib, 4))])
    with pytest.raises(LimitExceededError, match="work limit"):
        qeltrix_v6.seek_extract(io.BytesIO(c), 0, 5, passphrase=PW)
    assert not ref.argon2_params_ok(t_cost, m_cost_kib, 4)


def test_work_at_the_limit_still_parses() -> None:
    """t=2 at 1 GiB (and t=16 at 128 MiB) are allowed: the header parses and a key opens it."""
    for t_cost, m_cost_kib in ((2, 1 << 20), (16, 1 << 17)):
        c = with_stanzas([(ref.KIND_ARGON2ID, argon2id_body(t_cost, m_cost_kib, 4))])
        assert qeltrix_v6.seek_extract(io.BytesIO(c), 0, 5, key=bytes(32)) == b"hello"
        assert ref.argon2_params_ok(t_cost, m_cost_kib, 4)


def test_a_reader_can_lower_the_memory_ceiling(tmp_path: Path) -> None:
    c = tmp_path / "c.qltx"
    c.write_bytes(ref.encode(b"hello", passphrase=PW, kdf_params={"t_cost": 1, "m_cost_kib": 8192, "lanes": 1}))
    with pytest.raises(LimitExceededError, match="max-kdf-memory"):
        qeltrix_v6.seek_extract(str(c), 0, 5, passphrase=PW, max_kdf_memory=4 << 20)
    assert qeltrix_v6.seek_extract(str(c), 0, 5, passphrase=PW, max_kdf_memory=8 << 20) == b"hello"
    env = {**os.environ, "QELTRIX_PASSPHRASE": PW}
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "cat", "--max-kdf-memory", "4MiB", str(c)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 7 and "8 MiB" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", "cat", "--max-kdf-memory", "8MiB", str(c)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout == "hello", r.stderr
