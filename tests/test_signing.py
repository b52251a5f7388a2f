"""Signed containers (docs/FORMAT.md section 15): origin is authenticated only by a pinned signer.

The attack these tests pin down: anyone who knows a recipient's public key can write a whole
container for it (even reusing the victim's ``container_id``) that passes every MK check.
Without ``--signer`` ``verify`` says so ("origin: not authenticated"); with ``--signer`` such a
container, an unsigned one, one signed by another key, or any changed byte is rejected before
any plaintext of the affected data is released.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import KEY, OTHER_KEY, make_plaintext, pack_bytes, unpack_bytes
from hypothesis import given
from hypothesis import strategies as st
from qeltrix_v6 import _container, _core, _crypto, _pubkeys, _signing
from qeltrix_v6._recipients import RecipientChange, RecipientError, rewrite_recipients, rotate
from qeltrix_v6.errors import AuthenticationError, QeltrixError, SignatureError

ENV_VARS = ("QELTRIX_PASSPHRASE", "QELTRIX_NEW_PASSPHRASE", "QELTRIX_DEBUG")
EXIT_CORRUPT = 4
EXIT_USAGE = 2

SIGN_PEM, SIGN_PUB = _crypto.ed25519_generate()
SIGNER = _signing.encode_signer(SIGN_PUB)
OTHER_PEM, OTHER_PUB = _crypto.ed25519_generate()
OTHER_SIGNER = _signing.encode_signer(OTHER_PUB)


def run(*args: object, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)],
        capture_output=True,
        env=env,
        start_new_session=True,
        timeout=120,
    )


def signed(pt: bytes, **kwargs: object) -> bytes:
    return pack_bytes(pt, sign_with=SIGN_PEM, **kwargs)


def layout(c: bytes) -> dict[str, int]:
    """Region boundaries of a container, from its public header and trailer."""
    header_len = struct.unpack_from("<I", c, 10)[0]
    footer_offset, footer_len = struct.unpack_from("<QQ", c, len(c) - 24)
    return {
        "header_len": header_len,
        "footer_offset": footer_offset,
        "sig_offset": footer_offset + footer_len,
        "trailer_offset": len(c) - 24,
    }


def flip(c: bytes, i: int, bit: int = 1) -> bytes:
    b = bytearray(c)
    b[i] ^= bit
    return bytes(b)


# --- keys -----------------------------------------------------------------------------------


def test_signer_text_round_trip_and_checksum() -> None:
    assert SIGNER.startswith("qltx-ed25519:")
    assert _signing.decode_signer(SIGNER) == SIGN_PUB
    # One changed character breaks the checksum (or the base64): a mistyped key is refused.
    i = len(SIGNER) - 5
    typo = SIGNER[:i] + ("A" if SIGNER[i] != "A" else "B") + SIGNER[i + 1 :]
    with pytest.raises(qeltrix_v6.MalformedError):
        _signing.decode_signer(typo)
    with pytest.raises(qeltrix_v6.MalformedError):
        _signing.decode_signer(SIGNER.replace("qltx-ed25519:", "qltx-x25519:"))


def test_keygen_ed25519(tmp_path: Path) -> None:
    out = tmp_path / "me.sign"
    r = run("keygen", "--ed25519", "-o", out)
    assert r.returncode == 0, r.stderr
    pub = r.stdout.decode().strip()
    assert pub.count("\n") == 0 and pub.startswith("qltx-ed25519:")
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert _crypto.Ed25519Signer(out.read_bytes()).public == _signing.decode_signer(pub)
    before = out.read_bytes()
    r = run("keygen", "--ed25519", "-o", out)
    assert r.returncode == 6 and b"refusing to overwrite" in r.stderr
    assert out.read_bytes() == before


def test_sign_with_rejects_other_key_kinds(tmp_path: Path) -> None:
    x_priv, _ = _crypto.x25519_generate()
    rsa_pem, _ = _crypto.rsa_generate_pem(3072)
    for bad in (b"not a key", rsa_pem, x_priv + b"x"):
        with pytest.raises(qeltrix_v6.MalformedError):
            pack_bytes(b"x", sign_with=bad)
    with pytest.raises(qeltrix_v6.QeltrixIOError):
        pack_bytes(b"x", sign_with=str(tmp_path / "missing.sign"))
    # An X25519 identity or key file is 32 raw bytes: refused as a signing key file.
    ident = tmp_path / "me.id"
    ident.write_bytes(x_priv)
    with pytest.raises(qeltrix_v6.MalformedError, match="PEM"):
        pack_bytes(b"x", sign_with=ident)
    (tmp_path / "in").write_bytes(b"x")
    r = run("pack", "--key-file", ident, "--sign-with", ident, tmp_path / "in", tmp_path / "out.qltx")
    assert r.returncode == EXIT_USAGE and b"keygen --ed25519" in r.stderr
    assert not (tmp_path / "out.qltx").exists()


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("size", [0, 1, 64, 64 * 37 + 5])
def test_signed_round_trip(cipher: str, permute: bool, size: int) -> None:
    pt = make_plaintext(size, "rt")
    c = signed(pt, block_size=64, cipher=cipher, permute=permute)
    lay = layout(c)
    n = (size + 63) // 64
    assert lay["trailer_offset"] - lay["sig_offset"] == 96 + 32 * n
    assert c[lay["sig_offset"] : lay["sig_offset"] + 32] == SIGN_PUB
    assert unpack_bytes(c, signers=[SIGNER]) == pt
    assert unpack_bytes(c) == pt  # no signer required: read as usual
    assert unpack_bytes(c, signers=[OTHER_SIGNER, SIGNER]) == pt  # any one of the pinned keys
    for off, ln in ((0, 10), (size // 2, 100), (max(0, size - 3), 50)):
        got = qeltrix_v6.seek_extract(io.BytesIO(c), off, ln, key=KEY, signers=[SIGN_PUB])
        assert got == pt[off : off + ln]


def test_sign_with_path_seed_and_streaming_writer(tmp_path: Path) -> None:
    key_file = tmp_path / "me.sign"
    key_file.write_bytes(SIGN_PEM)
    pt = make_plaintext(5000, "w")
    for sign_with in (str(key_file), key_file, _crypto.Ed25519Signer(SIGN_PEM)):
        assert unpack_bytes(pack_bytes(pt, block_size=100, sign_with=sign_with), signers=[SIGNER]) == pt
    seed = bytes(range(32))
    seed_signer = _signing.encode_signer(_crypto.Ed25519Signer(seed).public)
    assert unpack_bytes(pack_bytes(pt, sign_with=seed), signers=[seed_signer]) == pt
    buf = io.BytesIO()
    with qeltrix_v6.open(buf, "wb", key=KEY, block_size=128, sign_with=SIGN_PEM) as w:
        for i in range(0, len(pt), 333):
            w.write(pt[i : i + 333])
    with qeltrix_v6.open(io.BytesIO(buf.getvalue()), key=KEY, signers=[SIGNER]) as f:
        f.seek(1234)
        assert f.read(500) == pt[1234:1734]


@given(
    pt=st.binary(max_size=3000),
    block_size=st.integers(16, 700),
    permute=st.booleans(),
    cipher=st.sampled_from(["aes-256-gcm", "chacha20-poly1305"]),
)
def test_property_signed_containers_round_trip_and_verify(
    pt: bytes, block_size: int, permute: bool, cipher: str
) -> None:
    c = signed(pt, block_size=block_size, permute=permute, cipher=cipher)
    assert unpack_bytes(c, signers=[SIGNER]) == pt
    opened = _container.open_reader(io.BytesIO(c), key=KEY)
    try:
        origin = _signing.check_signature(opened.reader, frozenset({SIGN_PUB}))
    finally:
        opened.close()
    assert origin.signed and origin.valid and origin.pinned and origin.signer == SIGNER


# --- the forgery ----------------------------------------------------------------------------


def forge_for(victim_pub: bytes, pt: bytes, container_id: bytes, sign_with: bytes | None = None) -> bytes:
    """What the attacker toolkit does: a whole valid container for the victim's public key,
    reusing the victim's container_id, with a fresh MK (no secret of the victim needed)."""
    mk = os.urandom(32)
    stanzas = [_pubkeys.recipient_stanza(_pubkeys.parse_recipient(victim_pub), mk, container_id)]
    header, keys = _container.build_header(mk, container_id, 1, 4096, 0, stanzas, signed=sign_with is not None)
    signer = _crypto.Ed25519Signer(sign_with) if sign_with is not None else None
    out = io.BytesIO()
    _core.pack_stream(io.BytesIO(pt), out, keys, header, 4096, 0, keys.k_perm, None, None, None, signer)
    return out.getvalue()


@pytest.fixture
def victim(tmp_path: Path) -> dict[str, object]:
    """A victim identity, a container its real writer signed for it, and a forged one."""
    priv, pub = _crypto.x25519_generate()
    (tmp_path / "victim.id").write_bytes(priv)
    real_pt = make_plaintext(20_000, "real")
    real = tmp_path / "real.qltx"
    qeltrix_v6.pack(io.BytesIO(real_pt), real, recipients=[pub], block_size=4096, sign_with=SIGN_PEM)
    cid = _core.Reader(io.BytesIO(real.read_bytes())).container_id
    evil_pt = b"EVIL " * 4000
    forged = tmp_path / "forged.qltx"
    forged.write_bytes(forge_for(pub, evil_pt, bytes(cid)))
    forged_signed = tmp_path / "forged-signed.qltx"
    forged_signed.write_bytes(forge_for(pub, evil_pt, bytes(cid), sign_with=OTHER_PEM))
    return {
        "id": tmp_path / "victim.id",
        "priv": priv,
        "real": real,
        "real_pt": real_pt,
        "forged": forged,
        "forged_signed": forged_signed,
        "evil_pt": evil_pt,
        "cid": bytes(cid),
    }


def test_forgery_passes_every_mk_check_but_verify_says_origin_unknown(victim) -> None:
    # The attack works against a reader that pins nothing: this is why origin is reported apart.
    assert qeltrix_v6.seek_extract(victim["forged"], 0, 5, identity=victim["priv"]) == b"EVIL "
    assert bytes(_core.Reader(io.BytesIO(victim["forged"].read_bytes())).container_id) == victim["cid"]
    r = run("verify", "--identity", victim["id"], victim["forged"])
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "integrity: authenticated under the container's key" in out
    assert "origin: not authenticated" in out and "anyone with a recipient's public key" in out
    r = run("verify", "--json", "--identity", victim["id"], victim["forged"])
    origin = json.loads(r.stdout)["origin"]
    assert origin["signed"] is False and origin["pinned"] is False
    r = run("verify", "--identity", victim["id"], victim["real"])
    assert r.returncode == 0 and f"origin: signed by {SIGNER} (valid; not pinned".encode() in r.stdout


@pytest.mark.parametrize("which", ["forged", "forged_signed"])
def test_forgery_rejected_with_signer(victim, which: str, tmp_path: Path) -> None:
    path = victim[which]
    r = run("verify", "--identity", victim["id"], "--signer", SIGNER, path)
    assert r.returncode == EXIT_CORRUPT and b"EVIL" not in r.stdout
    assert r.stderr.count(b"qeltrix: error:") == 1 and b"hint:" in r.stderr and b"Traceback" not in r.stderr
    out = tmp_path / "out.bin"
    r = run("unpack", "--identity", victim["id"], "--signer", SIGNER, path, out)
    assert r.returncode == EXIT_CORRUPT and not out.exists()
    r = run("cat", "--identity", victim["id"], "--signer", SIGNER, path)
    assert r.returncode == EXIT_CORRUPT and r.stdout == b""
    with pytest.raises(SignatureError):
        qeltrix_v6.open(path, identity=victim["priv"], signers=[SIGNER])
    with pytest.raises(SignatureError):
        qeltrix_v6.unpack(path, io.BytesIO(), identity=victim["priv"], signers=[SIGNER])
    # The real container passes the same checks.
    r = run("verify", "--identity", victim["id"], "--signer", SIGNER, victim["real"])
    assert r.returncode == 0 and b"(valid, pinned)" in r.stdout
    r = run("cat", "--identity", victim["id"], "--signer", SIGNER, victim["real"], "--offset", "100", "--length", "50")
    assert r.returncode == 0 and r.stdout == victim["real_pt"][100:150]


def test_forged_signature_section_is_rejected(victim) -> None:
    """The attacker copies the real container's signature section onto its forgery."""
    real = victim["real"].read_bytes()
    forged = bytearray(victim["forged_signed"].read_bytes())
    lr, lf = layout(real), layout(bytes(forged))
    assert lr["trailer_offset"] - lr["sig_offset"] == lf["trailer_offset"] - lf["sig_offset"]
    forged[lf["sig_offset"] : lf["trailer_offset"]] = real[lr["sig_offset"] : lr["trailer_offset"]]
    with pytest.raises(SignatureError):
        qeltrix_v6.seek_extract(io.BytesIO(bytes(forged)), 0, 5, identity=victim["priv"], signers=[SIGNER])


def test_signers_file(victim, tmp_path: Path) -> None:
    f = tmp_path / "signers.txt"
    f.write_text(f"# our release key\n\n{OTHER_SIGNER}  # backup\n{SIGNER}\n")
    r = run("verify", "--identity", victim["id"], "--signers-file", f, victim["real"])
    assert r.returncode == 0, r.stderr
    r = run("verify", "--identity", victim["id"], "--signers-file", f, victim["forged"])
    assert r.returncode == EXIT_CORRUPT
    f.write_text(SIGNER[:-2] + "xx\n")
    r = run("verify", "--identity", victim["id"], "--signers-file", f, victim["real"])
    assert r.returncode == EXIT_USAGE and b"line 1" in r.stderr
    r = run("verify", "--identity", victim["id"], "--signer", SIGNER[:-1], victim["real"])
    assert r.returncode == EXIT_USAGE


def test_info_checks_the_signature_without_any_key(victim, tmp_path: Path) -> None:
    r = run("info", "--signer", SIGNER, victim["real"])
    assert r.returncode == 0 and b"(valid, pinned)" in r.stdout
    r = run("info", "--json", victim["real"])
    assert json.loads(r.stdout)["origin"]["signer"] == SIGNER
    for which in ("forged", "forged_signed"):
        r = run("info", "--signer", SIGNER, victim[which])
        assert r.returncode == EXIT_CORRUPT
    real = victim["real"].read_bytes()
    tampered = tmp_path / "tampered.qltx"
    tampered.write_bytes(flip(real, layout(real)["sig_offset"] + 40))
    assert not _signing.public_origin(tampered).valid
    r = run("info", "--signer", SIGNER, tampered)
    assert r.returncode == EXIT_CORRUPT and b"does not verify" in r.stderr


# --- required signer: unsigned, wrong signer, any change ------------------------------------


def test_unsigned_and_wrong_signer_rejected() -> None:
    pt = make_plaintext(1000, "u")
    with pytest.raises(SignatureError, match="not signed"):
        unpack_bytes(pack_bytes(pt), signers=[SIGNER])
    with pytest.raises(SignatureError, match="not a required signer"):
        unpack_bytes(signed(pt), signers=[OTHER_SIGNER])
    with pytest.raises(ValueError):
        unpack_bytes(signed(pt), signers=[])


def test_every_byte_flip_is_rejected_with_a_signer() -> None:
    pt = make_plaintext(40, "flip")
    c = signed(pt, block_size=16)
    lay = layout(c)
    assert unpack_bytes(c, signers=[SIGNER]) == pt
    accepted_without_signer = []
    for i in range(len(c)):
        bad = flip(c, i, 1 << (i % 8))
        with pytest.raises(QeltrixError):
            unpack_bytes(bad, signers=[SIGNER])
        if lay["sig_offset"] <= i < lay["trailer_offset"]:
            with pytest.raises(SignatureError):
                unpack_bytes(bad, signers=[SIGNER])
            # Unpinned readers do not depend on the section: it influences no plaintext.
            accepted_without_signer.append(unpack_bytes(bad) == pt)
    assert all(accepted_without_signer) and len(accepted_without_signer) == 96 + 32 * 3


def test_truncation_is_rejected_with_a_signer() -> None:
    pt = make_plaintext(40, "trunc")
    c = signed(pt, block_size=16)
    for n in range(len(c)):
        with pytest.raises(QeltrixError):
            unpack_bytes(c[:n], signers=[SIGNER])
    # Dropping the signature section but keeping the trailer: the length check fails.
    lay = layout(c)
    with pytest.raises(AuthenticationError):
        unpack_bytes(c[: lay["sig_offset"]] + c[lay["trailer_offset"] :])


def reseal_frame(c: bytes, i: int, new_pt: bytes) -> bytes:
    """A co-recipient (it holds the MK) re-encrypts logical block ``i`` with other plaintext
    of the same length: a frame that passes every MK check."""
    opened = _container.open_reader(io.BytesIO(c), key=KEY)
    try:
        keys, r = opened.keys, opened.reader
        _, pt_len, frame_offset = r.block_info(i)
        assert len(new_pt) == pt_len
        last = i + 1 == r.block_count
    finally:
        opened.close()
    flags = 1 if last else 0
    frame = bytearray(_crypto.META_FRAME_LEN + pt_len + 16)
    keys.seal_stream_frame(i, flags, memoryview(bytearray(new_pt)), pt_len, memoryview(frame))
    b = bytearray(c)
    b[frame_offset : frame_offset + len(frame)] = frame
    return bytes(b)


def test_co_recipient_rewriting_a_frame_is_caught_by_its_digest() -> None:
    pt = make_plaintext(64 * 6, "co")
    c = signed(pt, block_size=64)
    evil = b"X" * 64
    bad = reseal_frame(c, 2, evil)
    # Valid under the MK: an unpinned reader returns the co-recipient's plaintext ...
    assert unpack_bytes(bad)[128:192] == evil
    # ... a pinned one refuses it, before releasing a byte of that block.
    with pytest.raises(SignatureError, match="block 2"):
        unpack_bytes(bad, signers=[SIGNER])
    with pytest.raises(SignatureError):
        qeltrix_v6.seek_extract(io.BytesIO(bad), 130, 10, key=KEY, signers=[SIGNER])
    # Random access reads only what it needs: the untouched blocks still read.
    assert qeltrix_v6.seek_extract(io.BytesIO(bad), 0, 100, key=KEY, signers=[SIGNER]) == pt[:100]


def test_co_recipient_keeping_the_signed_metadata_cannot_change_the_data() -> None:
    """frame_digest covers only meta_nonce || meta_ct (FORMAT.md 15.4): a co-recipient who keeps
    those bytes and re-encrypts data_ct under the same CDK and nonce fails the pt_sha256 check."""
    pt = make_plaintext(64 * 4, "meta")
    c = signed(pt, block_size=64, permute=False)
    opened = _container.open_reader(io.BytesIO(c), key=KEY)
    try:
        keys, (_, pt_len, off) = opened.keys, opened.reader.block_info(1)
    finally:
        opened.close()
    frame = bytearray(c[off : off + _crypto.META_FRAME_LEN + pt_len + 16])
    i, n, flags, _, salt, nonce, sha = struct.unpack("<QIB3s16s12s32s", keys.open_meta(frame))
    cdk = keys._cdk(salt, i, sha)
    aead = _crypto._AEADS[keys.cipher_id](cdk)
    data_ct = aead.encrypt(nonce, b"M" * n, keys._data_aad(i, n, flags))
    bad = bytearray(c)
    bad[off + _crypto.META_FRAME_LEN : off + len(frame)] = data_ct
    for signers in ([SIGNER], None):
        with pytest.raises(AuthenticationError, match="integrity hash"):
            unpack_bytes(bytes(bad), signers=signers)


def test_verify_without_signer_fails_on_a_broken_signature(tmp_path: Path) -> None:
    pt = make_plaintext(300, "v")
    key_file = tmp_path / "k"
    key_file.write_bytes(KEY)
    c = signed(pt, block_size=64)
    p = tmp_path / "c.qltx"
    p.write_bytes(flip(c, layout(c)["sig_offset"] + 70))
    r = run("verify", "--key-file", key_file, p)
    assert r.returncode == EXIT_CORRUPT and b"signature does not verify" in r.stderr
    p.write_bytes(reseal_frame(c, 1, b"Y" * 64))
    r = run("verify", "--key-file", key_file, "--json", p)
    assert r.returncode == EXIT_CORRUPT
    assert json.loads(r.stdout)["first_bad_block"]["block"] == 1


# --- header rewrites and rotation -----------------------------------------------------------


@pytest.fixture
def signed_file(tmp_path: Path) -> tuple[Path, bytes]:
    pt = make_plaintext(5000, "rw")
    p = tmp_path / "s.qltx"
    p.write_bytes(signed(pt, block_size=512))
    return p, pt


def test_header_rewrite_refused_without_sign_with(signed_file, tmp_path: Path) -> None:
    p, _ = signed_file
    before = hashlib.sha256(p.read_bytes()).digest()
    with pytest.raises(RecipientError, match="signed"):
        rewrite_recipients(p, RecipientChange(add_keys=[OTHER_KEY]), key=KEY)
    key_file, new_key = tmp_path / "k", tmp_path / "k2"
    key_file.write_bytes(KEY)
    new_key.write_bytes(OTHER_KEY)
    r = run("passwd", "--key-file", key_file, "--add-key-file", new_key, p)
    assert r.returncode == 1 and b"--sign-with" in r.stderr and b"nothing was changed" in r.stderr
    _, x_pub = _crypto.x25519_generate()
    r = run("recipients", "add", "--key-file", key_file, "--recipient", _pubkeys.recipient_text(4, x_pub), p)
    assert r.returncode == 1
    r = run("rotate", "--key-file", key_file, p)
    assert r.returncode == 1 and b"--sign-with" in r.stderr
    assert hashlib.sha256(p.read_bytes()).digest() == before


def test_header_rewrite_re_signs_with_sign_with(signed_file, tmp_path: Path) -> None:
    p, pt = signed_file
    key_file, new_key, sign_file = tmp_path / "k", tmp_path / "k2", tmp_path / "other.sign"
    key_file.write_bytes(KEY)
    new_key.write_bytes(OTHER_KEY)
    sign_file.write_bytes(OTHER_PEM)
    r = run("passwd", "--key-file", key_file, "--add-key-file", new_key, "--sign-with", sign_file, p)
    assert r.returncode == 0, r.stderr
    assert unpack_bytes(p.read_bytes(), key=OTHER_KEY, signers=[OTHER_SIGNER]) == pt
    with pytest.raises(SignatureError):
        unpack_bytes(p.read_bytes(), signers=[SIGNER])
    _, x_pub = _crypto.x25519_generate()
    r = run(
        "recipients",
        "add",
        "--key-file",
        key_file,
        "--sign-with",
        sign_file,
        "-r",
        _pubkeys.recipient_text(4, x_pub),
        p,
    )
    assert r.returncode == 0, r.stderr
    r = run("verify", "--key-file", key_file, "--signer", OTHER_SIGNER, p)
    assert r.returncode == 0, r.stderr


def test_re_signing_refuses_a_broken_signature(signed_file) -> None:
    p, _ = signed_file
    c = reseal_frame(p.read_bytes(), 0, b"Z" * 512)  # frame changed: digests no longer match ...
    c = flip(c, layout(c)["sig_offset"] + 40)  # ... and the section is damaged too
    p.write_bytes(c)
    with pytest.raises(SignatureError):
        rewrite_recipients(p, RecipientChange(add_keys=[OTHER_KEY]), key=KEY, sign_with=OTHER_PEM)
    assert p.read_bytes() == c


def test_header_rewrite_cannot_sign_an_unsigned_container(tmp_path: Path) -> None:
    p = tmp_path / "u.qltx"
    p.write_bytes(pack_bytes(b"x" * 100))
    with pytest.raises(RecipientError, match="rotate"):
        rewrite_recipients(p, RecipientChange(add_keys=[OTHER_KEY]), key=KEY, sign_with=SIGN_PEM)


def test_rotate_re_signs_and_checks_the_old_signature(signed_file, tmp_path: Path) -> None:
    p, pt = signed_file
    rotate(p, key=KEY, sign_with=OTHER_PEM)
    assert unpack_bytes(p.read_bytes(), signers=[OTHER_SIGNER]) == pt
    # An unsigned container becomes signed.
    u = tmp_path / "u.qltx"
    u.write_bytes(pack_bytes(pt, block_size=512))
    rotate(u, key=KEY, sign_with=SIGN_PEM)
    assert unpack_bytes(u.read_bytes(), signers=[SIGNER]) == pt
    # A co-recipient's rewritten frame is not laundered into a fresh signature.
    bad = reseal_frame(u.read_bytes(), 3, b"Q" * 512)
    u.write_bytes(bad)
    with pytest.raises(SignatureError):
        rotate(u, key=KEY, sign_with=SIGN_PEM)
    assert u.read_bytes() == bad


# --- SeekServer -----------------------------------------------------------------------------


def get(server: qeltrix_v6.SeekServer, path: str, rng: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request("GET", path, headers={"Range": rng} if rng else {})
        resp = conn.getresponse()
        try:
            return resp.status, resp.read()
        except http.client.IncompleteRead as e:
            return -1, e.partial
    finally:
        conn.close()


def test_seekserver_serves_only_signed_and_checks_each_block(tmp_path: Path) -> None:
    pt = make_plaintext(40_000, "srv")
    c = signed(pt, block_size=4096, permute=False)
    (tmp_path / "ok.bin.qltx").write_bytes(c)
    (tmp_path / "unsigned.bin.qltx").write_bytes(pack_bytes(pt, block_size=4096))
    (tmp_path / "other.bin.qltx").write_bytes(pack_bytes(pt, block_size=4096, sign_with=OTHER_PEM))
    (tmp_path / "badsig.bin.qltx").write_bytes(flip(c, layout(c)["sig_offset"] + 50))
    (tmp_path / "badframe.bin.qltx").write_bytes(reseal_frame(c, 2, b"W" * 4096))
    with qeltrix_v6.SeekServer(tmp_path, key=KEY, signers=[SIGNER]) as server:
        assert get(server, "/ok.bin", "bytes=1000-1999") == (206, pt[1000:2000])
        assert get(server, "/ok.bin", "bytes=-10") == (206, pt[-10:])
        assert get(server, "/ok.bin") == (200, pt)
        for name in ("unsigned", "other", "badsig"):
            status, body = get(server, f"/{name}.bin", "bytes=0-99")
            assert status >= 500 and pt[:99] not in body
        # The co-recipient's frame is refused; the blocks around it are still served.
        status, body = get(server, "/badframe.bin", "bytes=8200-8300")
        assert status >= 500 and b"W" * 50 not in body
        assert get(server, "/badframe.bin", "bytes=0-99") == (206, pt[:100])
    with qeltrix_v6.SeekServer(tmp_path, key=KEY) as server:  # no signer pinned: served as before
        assert get(server, "/unsigned.bin", "bytes=0-99") == (206, pt[:100])


# --- the vector and the independent reference decoder ---------------------------------------

VECTORS = Path(__file__).resolve().parent / "vectors"


def test_signed_vector_read_by_the_product() -> None:
    meta = json.loads((VECTORS / "signed.json").read_text())
    c = (VECTORS / meta["container"]).read_bytes()
    key = bytes.fromhex(meta["key_hex"])
    assert _signing.decode_signer(meta["signer"]).hex() == meta["signer_pub_hex"]
    assert unpack_bytes(c, key=key, signers=[meta["signer"]]).hex() == meta["plaintext_hex"]
    with pytest.raises(SignatureError):
        unpack_bytes(c, key=key, signers=[SIGNER])
    assert len(c) - 24 - (meta["footer_offset"] + meta["footer_len"]) == meta["sig_len"]


def test_reference_and_product_agree_on_signed_containers() -> None:
    import reference_decoder as ref

    pt = make_plaintext(64 * 9 + 7, "agree")
    # Product writes, reference reads (S1-S3) and recomputes every digest and the signature.
    c = signed(pt, block_size=64)
    assert ref.decode(c, key=KEY, signers=[SIGN_PUB]) == pt
    info = ref.inspect(c, key=KEY)
    sig = ref.check_signature(c, info)
    assert sig["valid"] and sig["signer_pub"] == SIGN_PUB
    with pytest.raises(ref.RefSignature):
        ref.decode(c, key=KEY, signers=[OTHER_PUB])
    # Reference writes (deterministic Ed25519 from a seed), product reads.
    seed = bytes(range(32))
    seed_pub = _crypto.Ed25519Signer(seed).public
    rc = ref.encode(pt, key=KEY, block_size=64, perm_window=4, sign_with=seed)
    assert unpack_bytes(rc, signers=[seed_pub]) == pt
    with pytest.raises(SignatureError):
        unpack_bytes(rc, signers=[SIGN_PUB])
    # Both reject the same changes: unsigned, a rewritten frame, a flipped section byte.
    cases = [
        ref.encode(pt, key=KEY, block_size=64),
        reseal_frame(rc, 4, b"R" * 64),
        flip(rc, layout(rc)["sig_offset"] + 100),
        flip(rc, layout(rc)["trailer_offset"] - 1),
    ]
    for bad in cases:
        with pytest.raises(ref.RefSignature):
            ref.decode(bad, key=KEY, signers=[seed_pub])
        with pytest.raises(SignatureError):
            unpack_bytes(bad, signers=[seed_pub])
        # And neither depends on the section without a signer.
        assert ref.decode(bad, key=KEY) == unpack_bytes(bad)


def test_serve_subprocess_with_signers_file(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from test_cli_servers import running

    root = tmp_path / "root"
    root.mkdir()
    pt = make_plaintext(300_000, "serve")
    (root / "ok.bin.qltx").write_bytes(signed(pt))
    (root / "unsigned.bin.qltx").write_bytes(pack_bytes(pt))
    key_file, signers = tmp_path / "k", tmp_path / "signers.txt"
    key_file.write_bytes(KEY)
    signers.write_text(f"# release signers\n{SIGNER}\n")
    args = ("serve", str(root), "--port", "0", "--key-file", str(key_file), "--signers-file", str(signers))
    with running(*args, ready=r"on (http://\S+)") as (_, m):
        req = urllib.request.Request(m.group(1) + "/ok.bin", headers={"Range": "bytes=200000-200009"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 206 and resp.read() == pt[200000:200010]
        req = urllib.request.Request(m.group(1) + "/unsigned.bin", headers={"Range": "bytes=0-9"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code >= 500 and pt[:10] not in e.value.read()
