"""Public-key recipients (X25519, RSA-OAEP), KMS envelopes, header-only recipient changes and
MK rotation (docs/FORMAT.md section 3.1, kinds 4-6; docs/SECURITY.md).

KMS tests talk to moto in server mode on 127.0.0.1: a real HTTP KMS API in another thread.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from qeltrix_v6 import _core, _crypto, cli
from qeltrix_v6._container import build_header, open_reader, unlock_header
from qeltrix_v6._recipients import RecipientChange, RecipientError, rewrite_recipients, rotate
from qeltrix_v6.cli import ExitCode, app
from qeltrix_v6.errors import AuthenticationError, LimitExceededError, MalformedError, WrongKeyError
from qeltrix_v6.gateway import encode_public_key
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
ENV_VARS = ("QELTRIX_PASSPHRASE", "QELTRIX_NEW_PASSPHRASE", "QELTRIX_DEBUG", "QELTRIX_KMS_ENDPOINT")
PW = "correct horse"
FAST_PW = {"kdf": "pbkdf2", "kdf_params": {"iterations": 1000}}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli._credentials, "_can_prompt", lambda: False)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)],
        capture_output=True,
        env=base,
        start_new_session=True,
        timeout=60,
    )


def error_line(stderr: str | bytes) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    lines = [x for x in text.splitlines() if x.strip()]
    assert lines and lines[0].startswith("qeltrix: error: "), text
    return lines[0]


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[bytes, bytes]:
    return _crypto.rsa_generate_pem(3072)


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(300_000)


def x25519_pair() -> tuple[bytes, str]:
    priv, pub = _crypto.x25519_generate()
    return priv, encode_public_key(pub)


def pack_mem(pt: bytes, **kwargs: object) -> bytes:
    out = io.BytesIO()
    qeltrix_v6.pack(io.BytesIO(pt), out, block_size=4096, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def read_all(c: bytes, **kwargs: object) -> bytes:
    out = io.BytesIO()
    qeltrix_v6.unpack(io.BytesIO(c), out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def body_after_header(path: Path) -> bytes:
    raw = path.read_bytes()
    header_len = struct.unpack_from("<I", raw, 10)[0]
    return raw[header_len:]


# --- API round trips --------------------------------------------------------------------------


def test_x25519_round_trip_and_errors(data: bytes) -> None:
    priv, pub = x25519_pair()
    other, _ = x25519_pair()
    c = pack_mem(data, recipients=[pub])
    assert read_all(c, identity=priv) == data
    assert qeltrix_v6.seek_extract(io.BytesIO(c), 1000, 10, identity=priv) == data[1000:1010]
    with qeltrix_v6.open(io.BytesIO(c), identity=priv) as f:
        f.seek(-5, 2)
        assert f.read() == data[-5:]
    with pytest.raises(WrongKeyError, match="wrong identity"):
        read_all(c, identity=other)
    with pytest.raises(WrongKeyError, match="sealed to public keys"):
        read_all(c, key=bytes(32))
    with pytest.raises(ValueError, match="required"):
        read_all(c)


def test_raw_public_key_bytes_are_a_recipient(data: bytes) -> None:
    priv, pub = _crypto.x25519_generate()
    assert read_all(pack_mem(data, recipients=[pub]), identity=priv) == data


def test_rsa_round_trip(data: bytes, rsa_pair: tuple[bytes, bytes]) -> None:
    priv_pem, pub_pem = rsa_pair
    c = pack_mem(data, recipients=[pub_pem])
    assert read_all(c, identity=priv_pem) == data
    other_priv, _ = _crypto.rsa_generate_pem(3072)
    with pytest.raises(WrongKeyError, match="wrong identity"):
        read_all(c, identity=other_priv)


def test_small_rsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pub = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(MalformedError, match="at least 3072"):
        pack_mem(b"x", recipients=[pub])


def test_mixed_recipients_each_open(data: bytes, rsa_pair: tuple[bytes, bytes]) -> None:
    x1, p1 = x25519_pair()
    x2, p2 = x25519_pair()
    key = os.urandom(32)
    c = pack_mem(data, key=key, passphrase=PW, recipients=[p1, rsa_pair[1], p2], **FAST_PW)
    kinds = [k for k, _ in _core.Reader(io.BytesIO(c)).stanzas]
    assert kinds == [1, 3, 4, 5, 4]
    for cred in ({"key": key}, {"passphrase": PW}, {"identity": x1}, {"identity": x2}, {"identity": rsa_pair[0]}):
        assert read_all(c, **cred) == data
    assert read_all(c, identity=[os.urandom(32), x2]) == data  # several identities: any one opens


def test_bad_recipient_strings() -> None:
    _, pub = x25519_pair()
    damaged = pub[:-3] + ("A" if pub[-3] != "A" else "B") + pub[-2:]
    with pytest.raises(MalformedError, match="damaged"):
        pack_mem(b"x", recipients=[damaged])
    with pytest.raises(MalformedError, match="not a recipient"):
        pack_mem(b"x", recipients=["ssh-ed25519 AAAA"])
    with pytest.raises(MalformedError, match="low-order"):
        pack_mem(b"x", recipients=[bytes(32)])


def test_tampered_x25519_stanza_is_corrupt_not_wrong_key(data: bytes) -> None:
    priv, pub = x25519_pair()
    c = bytearray(pack_mem(data, recipients=[pub]))
    stanza = 44 + 3
    c[stanza + 70] ^= 1  # inside the wrapped MK
    header_len = struct.unpack_from("<I", c, 10)[0]
    end = header_len - 64
    c[end : end + 32] = _crypto.sha256(bytes(c[:end]))  # a deliberate forger fixes the checksum
    with pytest.raises(AuthenticationError):
        read_all(bytes(c), identity=priv)


# --- limits: refused before any expensive work -----------------------------------------------


def _header(stanzas: list[tuple[int, bytes]], count: int | None = None) -> bytes:
    body = b"".join(bytes([k]) + struct.pack("<H", len(b)) + b for k, b in stanzas)
    header_len = 44 + len(body) + 64
    fixed = b"QLTXV6\r\n" + struct.pack("<HIHBBII", 1, header_len, 0, 1, 0, 4096, 0) + os.urandom(16)
    fixed += struct.pack("<H", len(stanzas) if count is None else count)
    unsealed = fixed + body
    return unsealed + _crypto.sha256(unsealed) + os.urandom(32) + bytes(200)


HOSTILE_ARGON2 = struct.pack("<16sIII12s48s", bytes(16), 16, 1 << 20, 1, bytes(12), bytes(48))


def test_a_thousand_recipients_are_refused_before_any_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    # Costly Argon2id stanzas (1 GiB each): the count is refused before a single KDF runs.
    runs: list[int] = []
    real = _crypto._argon2id_kek

    def counting(*args: Any) -> bytes:
        runs.append(1)
        return real(*args)

    monkeypatch.setattr(_crypto, "_argon2id_kek", counting)
    c = _header([(2, HOSTILE_ARGON2)] * 1000)
    assert len(c) < 1 << 20
    with pytest.raises(LimitExceededError, match="recipient_count 1000"):
        qeltrix_v6.seek_extract(io.BytesIO(c), 0, 1, passphrase=PW)
    with pytest.raises(LimitExceededError):
        qeltrix_v6.seek_extract(io.BytesIO(_header([(4, bytes(124))] * 1000)), 0, 1, identity=os.urandom(32))
    assert runs == []


@pytest.mark.parametrize(
    ("stanza", "error", "fragment"),
    [
        ((9, bytes(5000)), LimitExceededError, "exceeds 4096"),
        ((4, bytes(125)), MalformedError, "expected 124"),
        ((5, struct.pack("<H", 3000) + bytes(3500)), LimitExceededError, "spki_len"),
        ((5, struct.pack("<H", 400) + bytes(400 + 100)), MalformedError, "ciphertext length"),
        ((6, struct.pack("<H", 5) + b"alias" + struct.pack("<H", 99) + bytes(10)), MalformedError, "blob_len"),
    ],
)
def test_oversized_or_inconsistent_stanzas_are_refused(
    stanza: tuple[int, bytes], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        qeltrix_v6.seek_extract(io.BytesIO(_header([stanza])), 0, 1, identity=os.urandom(32))


def test_cli_refuses_a_thousand_recipients(tmp_path: Path) -> None:
    p = tmp_path / "hostile.qltx"
    p.write_bytes(_header([(2, HOSTILE_ARGON2)] * 1000))
    r = invoke("recipients", "list", p)
    assert r.exit_code == ExitCode.NOT_A_CONTAINER
    assert "recipient_count 1000 exceeds 64" in error_line(r.stderr)


# --- CLI: the encrypt-only role ----------------------------------------------------------------


def test_public_key_only_writer_cannot_read_what_it_packs(tmp_path: Path, data: bytes) -> None:
    """Real processes: a writer that only has the public key packs; only the identity reads."""
    reader_dir, writer_dir = tmp_path / "reader", tmp_path / "writer"
    reader_dir.mkdir()
    writer_dir.mkdir()
    ident = reader_dir / "me.id"
    r = run("keygen", "--x25519", "-o", ident)
    assert r.returncode == 0, r.stderr
    pub = r.stdout.decode().strip()
    assert pub.startswith("qltx-x25519:")
    assert oct(ident.stat().st_mode & 0o777) == "0o600"

    # The writer's world: its plaintext and the public key, nothing secret.
    src = writer_dir / "db.dump"
    src.write_bytes(data)
    c = writer_dir / "db.qltx"
    r = run("pack", "--recipient", pub, src, c)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(writer_dir)) == ["db.dump", "db.qltx"]

    # No identity: a clear usage error, not a passphrase prompt.
    r = run("unpack", c, writer_dir / "out")
    assert r.returncode == ExitCode.USAGE
    assert "sealed to public keys" in error_line(r.stderr)
    assert "--identity" in r.stderr.decode()
    # Any other secret the writer might have: wrong key.
    wrong = writer_dir / "writer.id"
    assert run("keygen", "--x25519", "-o", wrong).returncode == 0
    r = run("unpack", "--identity", wrong, c, writer_dir / "out")
    assert r.returncode == ExitCode.WRONG_KEY
    assert "wrong identity" in error_line(r.stderr)
    assert not (writer_dir / "out").exists()

    # The reader.
    r = run("unpack", "--identity", ident, c, reader_dir / "out")
    assert r.returncode == 0, r.stderr
    assert (reader_dir / "out").read_bytes() == data
    r = run("cat", "--identity", ident, "--offset", "100", "--length", "50", c)
    assert r.stdout == data[100:150]
    assert run("verify", "--identity", ident, c).returncode == 0


def test_cli_rsa_and_recipients_file(tmp_path: Path, data: bytes, rsa_pair: tuple[bytes, bytes]) -> None:
    priv_pem, pub_pem = rsa_pair
    (tmp_path / "ops.pem").write_bytes(priv_pem)
    (tmp_path / "ops.pub.pem").write_bytes(pub_pem)
    x_priv, x_pub = x25519_pair()
    (tmp_path / "x.id").write_bytes(x_priv)
    (tmp_path / "recipients.txt").write_text(f"# team\n\n{x_pub}\n{pub_pem.decode()}")
    src = tmp_path / "src"
    src.write_bytes(data)
    r = invoke("pack", "--recipients-file", tmp_path / "recipients.txt", src, tmp_path / "a.qltx")
    assert r.exit_code == 0, r.output
    r = invoke("pack", "--recipient", tmp_path / "ops.pub.pem", src, tmp_path / "b.qltx")
    assert r.exit_code == 0, r.output
    for container, ident in (("a.qltx", "x.id"), ("a.qltx", "ops.pem"), ("b.qltx", "ops.pem")):
        out = tmp_path / f"{container}.{ident}.out"
        r = invoke("unpack", "--identity", tmp_path / ident, tmp_path / container, out)
        assert r.exit_code == 0, r.output
        assert out.read_bytes() == data
    r = invoke("unpack", "--identity", tmp_path / "x.id", tmp_path / "b.qltx", tmp_path / "no")
    assert r.exit_code == ExitCode.WRONG_KEY
    r = invoke("pack", "--recipient", "no-such.pem", src, tmp_path / "c.qltx")
    assert r.exit_code == ExitCode.USAGE
    assert "not a qltx-x25519" in error_line(r.stderr)


def test_serve_with_identity(tmp_path: Path, data: bytes) -> None:
    from qeltrix_v6.cli._servers import _SeekServer

    priv, pub = x25519_pair()
    qeltrix_v6.pack(io.BytesIO(data), tmp_path / "d.bin.qltx", recipients=[pub], block_size=4096)
    with _SeekServer(str(tmp_path), creds=cli._credentials.Credentials(identities=[priv])) as server:
        req = urllib.request.Request(server.url + "/d.bin", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.read() == data[10:20]


# --- header-only changes ------------------------------------------------------------------------


def test_recipients_add_remove_list_touch_only_the_header(tmp_path: Path, data: bytes) -> None:
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    a_priv, a_pub = x25519_pair()
    b_priv, b_pub = x25519_pair()
    (tmp_path / "b.id").write_bytes(b_priv)
    src = tmp_path / "src"
    src.write_bytes(data)
    c = tmp_path / "c.qltx"
    assert invoke("pack", "--key-file", key, "--recipient", a_pub, src, c).exit_code == 0
    before = body_after_header(c)

    r = run("recipients", "add", "--key-file", key, "--recipient", b_pub, c)
    assert r.returncode == 0, r.stderr
    assert body_after_header(c) == before
    assert read_all(c.read_bytes(), identity=b_priv) == data

    r = invoke("recipients", "list", c)
    assert r.exit_code == 0, r.output
    assert a_pub in r.stdout and b_pub in r.stdout and "key" in r.stdout

    r = invoke("recipients", "remove", "--identity", tmp_path / "b.id", "--recipient", a_pub, c)
    assert r.exit_code == 0, r.output
    assert body_after_header(c) == before
    with pytest.raises(WrongKeyError):
        read_all(c.read_bytes(), identity=a_priv)
    assert read_all(c.read_bytes(), identity=b_priv) == data

    r = invoke("recipients", "remove", "--key-file", key, "--recipient", a_pub, c)
    assert r.exit_code == ExitCode.ERROR
    assert "is not a recipient" in error_line(r.stderr)
    r = invoke("recipients", "add", "--key-file", key, "--recipient", b_pub, c)
    assert r.exit_code == ExitCode.ERROR
    assert "already a recipient" in error_line(r.stderr)


def test_cannot_remove_the_last_recipient(tmp_path: Path) -> None:
    priv, pub = x25519_pair()
    c = tmp_path / "c.qltx"
    qeltrix_v6.pack(io.BytesIO(b"abc"), c, recipients=[pub])
    with pytest.raises(RecipientError, match="nor any other recipient"):
        rewrite_recipients(c, RecipientChange(remove_recipients=[pub]), identity=priv)


def _bytes_read_by_this_process() -> int:
    """``rchar`` of /proc/self/io: every byte read() and pread() returned, page cache or not."""
    text = Path("/proc/self/io").read_text()
    return int(re.search(r"^rchar: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io")
def test_header_rewrite_reads_the_header_not_the_blocks(tmp_path: Path) -> None:
    key = os.urandom(32)
    c = tmp_path / "big.qltx"
    with open(c, "wb") as out:
        qeltrix_v6.pack(io.BytesIO(bytes(64 << 20)), out, key=key, block_size=1 << 20)
    _, pub = x25519_pair()
    before = _bytes_read_by_this_process()
    rewrite_recipients(c, RecipientChange(add_recipients=[_pub(pub)]), key=key)
    read = _bytes_read_by_this_process() - before
    # Header, trailer and index are a few KiB; one block alone is 1 MiB.
    assert read < 1 << 20, read
    assert qeltrix_v6.seek_extract(c, 5 << 20, 10, key=key) == bytes(10)


def _pub(text: str):
    from qeltrix_v6._pubkeys import parse_recipient

    return parse_recipient(text)


# --- rotation -----------------------------------------------------------------------------------


def test_rotate_keeps_recipients_and_locks_out_the_old_mk(tmp_path: Path, rsa_pair: tuple[bytes, bytes]) -> None:
    data = os.urandom(200_000)
    x_priv, x_pub = x25519_pair()
    key = os.urandom(32)
    c = tmp_path / "c.qltx"
    qeltrix_v6.pack(io.BytesIO(data), c, key=key, recipients=[x_pub, rsa_pair[1]], block_size=4096)
    os.chmod(c, 0o640)
    old = c.read_bytes()
    old_opened = open_reader(io.BytesIO(old), key=key)
    old_keys = old_opened.keys
    old_opened.close()

    result = rotate(c, identity=x_priv, drop_missing=False, key=key)
    assert result.pt_len == len(data) and not result.dropped
    new = c.read_bytes()
    assert oct(c.stat().st_mode & 0o777) == "0o640"
    for cred in ({"key": key}, {"identity": x_priv}, {"identity": rsa_pair[0]}):
        assert read_all(new, **cred) == data
    # The old MK opens nothing in the new file: not its header, not its index...
    reader = _core.Reader(io.BytesIO(new))
    with pytest.raises(AuthenticationError):
        old_keys.verify_header_mac(reader.header_maced, reader.header_mac)
    stale = _crypto.ContainerKeys(old_keys.mk, bytes(reader.container_id), reader.cipher_id)
    with pytest.raises(AuthenticationError):
        reader.load_index(stale)
    # ...and the old header (with the old stanzas) on the new frames does not open either.
    old_hl = struct.unpack_from("<I", old, 10)[0]
    new_hl = struct.unpack_from("<I", new, 10)[0]
    spliced = old[:old_hl] + new[new_hl:]
    with pytest.raises(AuthenticationError):
        read_all(spliced, key=key)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".qeltrix-tmp")]


def test_rotate_needs_the_secret_of_secret_recipients(tmp_path: Path) -> None:
    x_priv, x_pub = x25519_pair()
    c = tmp_path / "c.qltx"
    qeltrix_v6.pack(io.BytesIO(b"data" * 1000), c, passphrase=PW, recipients=[x_pub], **FAST_PW)  # type: ignore[arg-type]
    before = c.read_bytes()
    with pytest.raises(RecipientError, match="cannot keep 1 recipient"):
        rotate(c, identity=x_priv)
    assert c.read_bytes() == before
    # With the passphrase too it is kept, with the same KDF parameters.
    rotate(c, identity=x_priv, passphrase=PW)
    assert read_all(c.read_bytes(), passphrase=PW) == b"data" * 1000
    assert [k for k, _ in _core.Reader(io.BytesIO(c.read_bytes())).stanzas] == [3, 4]
    # Or dropped explicitly.
    rotate(c, identity=x_priv, drop_missing=True)
    assert [k for k, _ in _core.Reader(io.BytesIO(c.read_bytes())).stanzas] == [4]


def test_rotate_cli_subprocess(tmp_path: Path, data: bytes) -> None:
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    src = tmp_path / "src"
    src.write_bytes(data)
    c = tmp_path / "c.qltx"
    assert invoke("pack", "--key-file", key, "--no-permute", src, c).exit_code == 0
    old_cid = _core.Reader(io.BytesIO(c.read_bytes())).container_id
    r = run("rotate", "--key-file", key, c)
    assert r.returncode == 0, r.stderr
    reader = _core.Reader(io.BytesIO(c.read_bytes()))
    assert reader.container_id != old_cid and reader.perm_window == 0
    r = run("cat", "--key-file", key, c)
    assert r.stdout == data


def test_rotate_failure_leaves_the_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    c = tmp_path / "c.qltx"
    qeltrix_v6.pack(io.BytesIO(os.urandom(100_000)), c, key=key, block_size=4096)
    raw = bytearray(c.read_bytes())
    header_len = struct.unpack_from("<I", raw, 10)[0]
    raw[header_len + 5000] ^= 1  # a damaged block
    c.write_bytes(bytes(raw))
    with pytest.raises(AuthenticationError):
        rotate(c, key=key)
    assert c.read_bytes() == bytes(raw)
    assert os.listdir(tmp_path) == ["c.qltx"]


# --- KMS envelopes against moto in server mode ----------------------------------------------------


@pytest.fixture(scope="module")
def kms_server() -> Iterator[str]:
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def kms_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


def _kms_key(url: str, alias: str) -> str:
    import boto3

    kms = boto3.client("kms", endpoint_url=url, region_name="us-east-1")
    key_id: str = kms.create_key()["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return key_id


def test_kms_round_trip_and_rotation(kms_server: str, kms_env: dict[str, str], tmp_path: Path) -> None:
    from qeltrix_v6 import KmsConfig

    arn = _kms_key(kms_server, "alias/qeltrix-test")
    cfg = KmsConfig(endpoint_url=kms_server, timeout=5)
    data = os.urandom(50_000)
    c = tmp_path / "c.qltx"
    x_priv, x_pub = x25519_pair()
    qeltrix_v6.pack(io.BytesIO(data), c, recipients=["kms:alias/qeltrix-test", x_pub], kms=cfg)
    assert read_all(c.read_bytes(), kms=cfg, kms_key_ids=[arn]) == data
    assert read_all(c.read_bytes(), kms=KmsConfig(endpoint_url=kms_server, discovery=True)) == data
    assert read_all(c.read_bytes(), identity=x_priv) == data
    r = invoke("recipients", "list", c)
    assert f"kms:{arn}" in r.stdout
    rotate(c, identity=x_priv, kms=cfg)
    assert read_all(c.read_bytes(), kms=cfg, kms_key_ids=[arn.rsplit("/", 1)[1]]) == data
    # The encryption context binds the blob to its container: another container's stanza fails.
    other = tmp_path / "other.qltx"
    qeltrix_v6.pack(io.BytesIO(b"x"), other, recipients=[f"kms:{arn}"], kms=cfg)
    stanzas = [(int(k), bytes(b)) for k, b in _core.Reader(io.BytesIO(other.read_bytes())).stanzas]
    cid = bytes(_core.Reader(io.BytesIO(c.read_bytes())).container_id)
    forged, _ = build_header(os.urandom(32), cid, 1, 4096, 0, stanzas)
    with pytest.raises(WrongKeyError, match="KMS refused"):
        unlock_header(_core.parse_header(forged), kms=KmsConfig(endpoint_url=kms_server, key_ids=(arn,)))


def test_kms_strict_mode_never_calls_a_key_the_file_names(
    kms_server: str, kms_env: dict[str, str], tmp_path: Path
) -> None:
    """An attacker-written stanza naming the attacker's key is not called unless allowed.

    The reader is pointed at an endpoint that refuses connections: a WrongKeyError (not
    KmsUnavailableError) shows no request was even attempted.
    """
    from qeltrix_v6 import KmsConfig

    victim = _kms_key(kms_server, "alias/victim")
    attacker = _kms_key(kms_server, "alias/attacker")
    c = tmp_path / "forged.qltx"
    qeltrix_v6.pack(io.BytesIO(b"x"), c, recipients=[f"kms:{attacker}"], kms=KmsConfig(endpoint_url=kms_server))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again before use: connections are refused
    for cfg in (KmsConfig(endpoint_url=dead), KmsConfig(endpoint_url=dead, key_ids=(victim,))):
        with pytest.raises(WrongKeyError, match="not in the allowed list"):
            read_all(c.read_bytes(), kms=cfg)
    # Discovery mode is the explicit opt-in that does call it.
    assert read_all(c.read_bytes(), kms=KmsConfig(endpoint_url=kms_server, discovery=True)) == b"x"


def test_kms_cli(kms_server: str, kms_env: dict[str, str], tmp_path: Path) -> None:
    _kms_key(kms_server, "alias/qeltrix-cli")
    src = tmp_path / "src"
    src.write_bytes(b"secret" * 1000)
    c = tmp_path / "c.qltx"
    r = run("pack", "--kms-endpoint", kms_server, "--recipient", "kms:alias/qeltrix-cli", src, c, env=kms_env)
    assert r.returncode == 0, r.stderr
    env = {**kms_env, "QELTRIX_KMS_ENDPOINT": kms_server}
    r = run("cat", c, env=env)
    assert r.returncode == 3, r.stderr  # strict mode: no key allowed, nothing called
    assert b"--kms-key-id" in r.stderr
    arn = json.loads(run("info", "--json", c).stdout)["recipients"][0]["recipient"].removeprefix("kms:")
    r = run("cat", "--kms-key-id", arn, c, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"secret" * 1000
    r = run("cat", "--kms-discovery", c, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(60)  # a hang (no KMS timeout) fails here; a retrying client takes seconds
def test_kms_unreachable_is_a_clear_error_not_a_hang(kms_env: dict[str, str], tmp_path: Path) -> None:
    from qeltrix_v6 import KmsConfig

    # A port that accepts connections and never answers (the worst case: no RST, no reply).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    try:
        for endpoint in (dead, url):
            with pytest.raises(qeltrix_v6.KmsUnavailableError, match="KMS unreachable"):
                pack_mem(b"x", recipients=["kms:alias/x"], kms=KmsConfig(endpoint_url=endpoint, timeout=0.5))
        src = tmp_path / "src"
        src.write_bytes(b"x")
        r = invoke("pack", "--kms-endpoint", url, "--kms-timeout", "0.5", "-r", "kms:alias/x", src, tmp_path / "c")
        assert r.exit_code == ExitCode.IO
        assert "KMS unreachable" in error_line(r.stderr)
        assert not (tmp_path / "c").exists()
    finally:
        silent.close()


def test_concurrent_threads_do_not_share_state(data: bytes) -> None:
    # Identities are plain values: many readers at once in threads.
    priv, pub = x25519_pair()
    c = pack_mem(data, recipients=[pub])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            assert read_all(c, identity=priv) == data
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
