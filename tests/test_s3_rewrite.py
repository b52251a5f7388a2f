"""Header-only changes on object storage (README "Containers on object storage"): ``passwd`` and
``recipients add|remove`` on an ``s3://`` container rewrite the header with a multipart upload
whose unchanged bytes are copied by the server (``UploadPartCopy``), conditional on the ETag
seen at open. Against moto's server behind the logging proxy of ``s3util``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import qeltrix_v6
from conftest import KEY, assert_one_error, make_plaintext
from qeltrix_v6 import _s3rewrite
from qeltrix_v6._recipients import RecipientChange, rewrite_recipients
from qeltrix_v6.errors import WrongKeyError
from s3util import Logged, ProxyState, s3_bucket

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "qltx-rw"
PW = "correct horse battery staple"


@dataclass
class S3:
    state: ProxyState
    client: Any
    env: dict[str, str]

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def body(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def uploads(self) -> list[Any]:
        return list(self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_bucket(BUCKET) as (_, state, client, env):
        yield S3(state, client, env)


def cli(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)], capture_output=True, env=env, timeout=120
    )


def bytes_fetched(log: list[Logged], key: str, size: int) -> int:
    """Bytes of ``key`` the GETs in ``log`` asked for (their Range headers)."""
    total = 0
    for r in log:
        if r.method != "GET" or not r.path.split("?")[0].endswith("/" + key) or not r.status:
            continue
        spec = r.headers.get("range", "")
        assert spec.startswith("bytes="), f"a GET of the whole object: {r}"
        a, _, b = spec[len("bytes=") :].partition("-")
        if not a:
            total += min(int(b), size)
        else:
            total += min(int(b) + 1 if b else size, size) - int(a)
    return total


def copies(log: list[Logged], key: str) -> list[Logged]:
    return [r for r in log if r.method == "PUT" and "x-amz-copy-source" in r.headers and key in r.path]


def read_all(url: str, **cred: Any) -> bytes:
    with qeltrix_v6.open(url, **cred) as f:
        return bytes(f.read())


def pack(s3: S3, key: str, pt: bytes, **kw: Any) -> str:
    qeltrix_v6.pack(io.BytesIO(pt), s3.url(key), key=KEY, block_size=256 << 10, **kw)
    return s3.url(key)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "k.key").write_bytes(KEY)
    (tmp_path / "pw.txt").write_text(PW + "\n")
    return {"key": tmp_path / "k.key", "pw": tmp_path / "pw.txt", "dir": tmp_path}


def test_plan_parts_respects_s3_part_sizes() -> None:
    mib = 1 << 20
    plan = _s3rewrite.plan_parts(40 * mib, [(0, 4096)])
    assert plan == [("data", 0, 5 * mib), ("copy", 5 * mib, 40 * mib)]
    # A signed container: the header and the signature section at the end change.
    plan = _s3rewrite.plan_parts(40 * mib, [(0, 4096), (40 * mib - 300, 200)])
    assert plan == [("data", 0, 5 * mib), ("copy", 5 * mib, 40 * mib - 300), ("data", 40 * mib - 300, 40 * mib)]
    # A copy range under 5 MiB in the middle is fetched instead; copies stay at most 5 GiB.
    plan = _s3rewrite.plan_parts(9 * mib, [(0, 4096), (9 * mib - 300, 200)])
    assert plan == [("data", 0, 9 * mib)]
    big = 11 << 30
    plan = _s3rewrite.plan_parts(big, [(0, 4096)])
    assert [k for k, _, _ in plan] == ["data", "copy", "copy", "copy"]
    assert all(b - a <= _s3rewrite.MAX_PART for _, a, b in plan) and plan[-1][2] == big
    assert all(plan[i][2] == plan[i + 1][1] for i in range(len(plan) - 1))


def test_passwd_and_recipients_on_s3_copy_the_frames_server_side(s3: S3, files: dict[str, Path]) -> None:
    pt = make_plaintext(24 << 20, "s3-rewrite")
    url = pack(s3, "big.qltx", pt)
    size = len(s3.body("big.qltx"))
    # Set a passphrase (the key file stays), then drop the key file.
    s3.state.log.clear()
    r = cli(
        "passwd", "-q", "--key-file", files["key"], "--new-passphrase-file", files["pw"],
        "--kdf", "pbkdf2", "--kdf-iterations", "1000", url, env=s3.env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    log = list(s3.state.log)
    assert bytes_fetched(log, "big.qltx", size) < 6 << 20 < size // 4
    assert len(copies(log, "big.qltx")) == 1
    r = cli("passwd", "-q", "--passphrase-file", files["pw"], "--remove-key-file", files["key"], url, env=s3.env)
    assert r.returncode == 0, r.stderr
    assert read_all(url, passphrase=PW) == pt
    with pytest.raises(WrongKeyError):
        read_all(url, key=KEY)

    # recipients add / remove: an X25519 identity.
    ident = files["dir"] / "me.id"
    r = cli("keygen", "--x25519", "-o", ident, env=s3.env)
    assert r.returncode == 0, r.stderr
    pub = r.stdout.decode().strip()
    s3.state.log.clear()
    r = cli("recipients", "add", "-q", "--passphrase-file", files["pw"], "--recipient", pub, url, env=s3.env)
    assert r.returncode == 0, r.stderr
    assert bytes_fetched(list(s3.state.log), "big.qltx", size) < 6 << 20
    with qeltrix_v6.open(url, identity=ident.read_bytes()) as f:
        f.seek(len(pt) - 1000)
        assert f.read() == pt[-1000:]
    r = cli("recipients", "remove", "-q", "--passphrase-file", files["pw"], "--recipient", pub, url, env=s3.env)
    assert r.returncode == 0, r.stderr
    with pytest.raises(WrongKeyError):
        read_all(url, identity=ident.read_bytes())
    assert read_all(url, passphrase=PW) == pt
    assert s3.uploads() == []


def test_signed_container_is_resigned_on_s3(s3: S3, files: dict[str, Path]) -> None:
    signing = files["dir"] / "sign.key"
    r = cli("keygen", "--ed25519", "-o", signing, env=s3.env)
    assert r.returncode == 0, r.stderr
    pub = r.stdout.decode().strip()
    pt = make_plaintext(16 << 20, "s3-signed")
    url = pack(s3, "signed.qltx", pt, sign_with=signing.read_bytes())
    change = RecipientChange(add_keys=[bytes(32 * [7])])
    s3.state.log.clear()
    rewrite_recipients(url, change, key=KEY, sign_with=signing.read_bytes())
    assert copies(list(s3.state.log), "signed.qltx")
    with qeltrix_v6.open(url, key=bytes(32 * [7]), signers=[pub]) as f:
        assert bytes(f.read()) == pt


def test_concurrent_overwrite_fails_and_keeps_the_other_writers_object(s3: S3, files: dict[str, Path]) -> None:
    url = pack(s3, "race.qltx", make_plaintext(12 << 20, "race"))
    theirs = b"the other writer's object" * 1000

    def overwrite(entry: Logged) -> bool:
        if entry.method == "PUT" and "x-amz-copy-source" in entry.headers:
            s3.client.put_object(Bucket=BUCKET, Key="race.qltx", Body=theirs)
            return True
        return False

    other = files["dir"] / "other.key"
    other.write_bytes(bytes(32 * [9]))
    s3.state.hooks.append(overwrite)
    r = cli("passwd", "--key-file", files["key"], "--add-key-file", other, url, env=s3.env)
    s3.state.hooks.clear()
    assert r.returncode != 0
    assert_one_error(r.stderr, "replaced by another writer")
    assert s3.body("race.qltx") == theirs
    assert s3.uploads() == []


def test_small_object_is_one_conditional_put(s3: S3, files: dict[str, Path]) -> None:
    pt = make_plaintext(1 << 20, "small")
    url = pack(s3, "small.qltx", pt)
    other = files["dir"] / "other.key"
    other.write_bytes(bytes(32 * [9]))
    r = cli("passwd", "-q", "--key-file", files["key"], "--add-key-file", other, url, env=s3.env)
    assert r.returncode == 0, r.stderr
    assert read_all(url, key=bytes(32 * [9])) == pt
    theirs = b"replaced"

    def overwrite(entry: Logged) -> bool:
        if entry.method == "PUT" and "small.qltx" in entry.path:
            s3.client.put_object(Bucket=BUCKET, Key="small.qltx", Body=theirs)
            return True
        return False

    s3.state.hooks.append(overwrite)
    r = cli("passwd", "--key-file", files["key"], "--remove-key-file", other, url, env=s3.env)
    s3.state.hooks.clear()
    assert r.returncode != 0
    assert_one_error(r.stderr, "replaced by another writer")
    assert s3.body("small.qltx") == theirs


def test_without_boto3_one_line_and_no_write(s3: S3, files: dict[str, Path]) -> None:
    blocked = files["dir"] / "blocked"
    (blocked / "boto3").mkdir(parents=True)
    (blocked / "boto3" / "__init__.py").write_text("raise ImportError('boto3 blocked by the test')\n")
    url = pack(s3, "noboto.qltx", make_plaintext(64 << 10, "noboto"))
    s3.state.log.clear()
    env = dict(s3.env, PYTHONPATH=os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]))
    other = files["dir"] / "other.key"
    other.write_bytes(bytes(32 * [9]))
    r = cli("passwd", "--key-file", files["key"], "--add-key-file", other, url, env=env)
    assert r.returncode != 0
    assert_one_error(r.stderr, "boto3", "qeltrix-v6[s3]")
    assert [r for r in s3.state.log if r.method != "GET"] == []  # at most a look at the header


def test_rotate_on_s3_re_encrypts_and_never_replaces_another_writers_object(s3: S3, files: dict[str, Path]) -> None:
    pt = make_plaintext(9 << 20, "rotate")
    url = pack(s3, "rot.qltx", pt)
    before = s3.body("rot.qltx")
    r = cli("rotate", "-q", "--key-file", files["key"], url, env=s3.env)
    assert r.returncode == 0, r.stderr
    after = s3.body("rot.qltx")
    assert after != before and len(after) == len(before)  # re-encrypted: same shape, new bytes
    assert read_all(url, key=KEY) == pt
    assert s3.uploads() == []
    # Another writer replaces the object while the rotation runs (just before its completion
    # check): the rotation fails with one line and their object stays.
    theirs = b"the other writer's object" * 100

    def overwrite(entry: Logged) -> bool:
        if entry.method == "HEAD" and entry.path.split("?")[0].endswith("/rot.qltx"):
            s3.client.put_object(Bucket=BUCKET, Key="rot.qltx", Body=theirs)
            return True
        return False

    s3.state.hooks.append(overwrite)
    r = cli("rotate", "--key-file", files["key"], url, env=s3.env)
    s3.state.hooks.clear()
    assert r.returncode != 0
    assert_one_error(r.stderr, "replaced by another writer")
    assert s3.body("rot.qltx") == theirs
    assert s3.uploads() == []
