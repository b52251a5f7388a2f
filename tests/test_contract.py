"""The Rust/Python contract (rust/qeltrix-py/src/calls.rs, qeltrix_v6._contract): every method
or attribute the Rust core uses by name exists on every Python class that implements it, and
takes the number of positional arguments Rust passes; and the format constants the Python layer
reads from _core agree with the independent reference decoder's own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from qeltrix_v6 import _contract, _core, _crypto, errors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_decoder

KINDS = sorted({kind for kind, _, _ in _core.PYTHON_CALLS})


def test_every_kind_has_a_protocol_and_implementations() -> None:
    assert set(KINDS) == set(_contract.IMPLEMENTATIONS)
    for kind in KINDS:
        assert isinstance(getattr(_contract, kind), type), kind


@pytest.mark.parametrize(("kind", "name", "n_args"), _core.PYTHON_CALLS)
def test_rust_call_matches_python(kind: str, name: str, n_args: int | None) -> None:
    protocol = getattr(_contract, kind)
    if name != "__call__":
        assert name in dir(protocol), f"{kind}.{name} is missing from its Protocol"
    for cls, method in _contract.IMPLEMENTATIONS[kind]:
        attr = method if name == "__call__" else name
        if n_args is None:
            # An attribute: a property, a class attribute or one set in __init__ (a slot).
            slots = getattr(cls, "__slots__", ())
            assert hasattr(cls, attr) or attr in slots, f"{cls.__name__}.{attr} missing"
            continue
        assert callable(getattr(cls, attr, None)), f"{cls.__name__}.{attr} missing"
        assert _contract.accepts_positional(cls, attr, n_args), f"{cls.__name__}.{attr} does not take {n_args} args"
        assert not _contract.accepts_positional(cls, attr, n_args + 1), (
            f"{cls.__name__}.{attr} takes more than the {n_args} arguments Rust passes"
        )


def test_session_attribute_values() -> None:
    sessions = [_crypto.SharedKeySession(bytes(32)), _crypto.Handshake(bytes(32), frozenset())]
    for s in sessions:
        assert len(s.msg_lens) == 3


def test_error_classes_exist() -> None:
    for name in _core.ERROR_CLASSES:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.QeltrixError)
        assert name in errors.__all__


# The reference decoder keeps its own constants on purpose (it must not import the product):
# each must agree with the single definition in qeltrix-format that _core exports.
REFERENCE_NAMES = {
    "MAGIC": "MAGIC",
    "TRAILER_MAGIC": "TRAILER_MAGIC",
    "FORMAT_VERSION": "FORMAT_VERSION",
    "HEADER_FIXED_LEN": "HEADER_FIXED_LEN",
    "FLAG_PERMUTED": "HEADER_FLAG_PERMUTED",
    "FLAG_SIGNED": "HEADER_FLAG_SIGNED",
    "SIG_FIXED_LEN": "SIG_FIXED_LEN",
    "CIPHER_AES_256_GCM": "CIPHER_AES_256_GCM",
    "CIPHER_CHACHA20_POLY1305": "CIPHER_CHACHA20_POLY1305",
    "KIND_KEY": "KIND_KEY",
    "KIND_ARGON2ID": "KIND_ARGON2ID",
    "KIND_PBKDF2": "KIND_PBKDF2",
    "KIND_HANDSHAKE": "KIND_HANDSHAKE",
    "TAG_LEN": "TAG_LEN",
    "NONCE_LEN": "NONCE_LEN",
    "META_PT_LEN": "META_PT_LEN",
    "META_FRAME_LEN": "META_FRAME_LEN",
    "META_FLAG_FINAL": "META_FLAG_FINAL",
    "INDEX_FLAG_INCOMPLETE": "INDEX_FLAG_INCOMPLETE",
    "INDEX_ENTRY_LEN": "INDEX_ENTRY_LEN",
    "FOOTER_MIN_LEN": "INDEX_FOOTER_MIN_LEN",
    "TRAILER_LEN": "TRAILER_LEN",
    "MIN_BLOCK_SIZE": "MIN_BLOCK_SIZE",
    "MAX_BLOCK_SIZE": "MAX_BLOCK_SIZE",
    "MAX_HEADER_LEN": "MAX_HEADER_LEN",
    "MAX_RECIPIENTS": "MAX_RECIPIENTS",
    "MAX_STANZA_BODY_LEN": "MAX_STANZA_BODY_LEN",
    "MAX_BLOCK_COUNT": "MAX_BLOCK_COUNT",
    "ARGON2_M_MAX_KIB": "ARGON2ID_MAX_M_COST_KIB",
    "DEFAULT_BLOCK_SIZE": "DEFAULT_BLOCK_SIZE",
    "SK_MAGIC": "SK_MAGIC",
    "MAX_STREAM_HEADER_LEN": "MAX_STREAM_HEADER_LEN",
}


@pytest.mark.parametrize(("ref_name", "core_name"), sorted(REFERENCE_NAMES.items()))
def test_reference_decoder_constants_agree(ref_name: str, core_name: str) -> None:
    assert getattr(reference_decoder, ref_name) == getattr(_core, core_name)


def test_reference_decoder_ranges_agree() -> None:
    ref = reference_decoder
    assert ref.ARGON2_T_RANGE == (1, _core.ARGON2ID_MAX_T_COST)
    assert ref.ARGON2_LANES_RANGE == (1, _core.ARGON2ID_MAX_LANES)
    assert ref.PBKDF2_ITER_RANGE == (_core.PBKDF2_MIN_ITERATIONS, _core.PBKDF2_MAX_ITERATIONS)
    assert ref.HEADER_TAIL_LEN == 2 * 32
    for kind in (ref.KIND_KEY, ref.KIND_ARGON2ID, ref.KIND_PBKDF2, ref.KIND_HANDSHAKE):
        assert kind in _core.STANZA_NAMES


def test_python_layer_reads_core_constants() -> None:
    """The Python modules use _core's values, not restatements (a spot check of each module)."""
    from qeltrix_v6 import _container, _kms, _pubkeys, _recipients, gateway

    assert _recipients.MAX_RECIPIENTS == _container._MAX_RECIPIENTS == _core.MAX_RECIPIENTS
    assert _kms.KIND_KMS == _crypto.KIND_KMS == _core.KIND_KMS
    assert gateway.KIND_HANDSHAKE == _core.KIND_HANDSHAKE
    assert _pubkeys.KMS_MAX_BLOB_LEN == _core.KMS_MAX_BLOB_LEN
    assert len(_crypto.HS_MAGIC) + 2 * _crypto.X25519_LEN == _crypto.HS_MSG1_LEN
    assert max(_crypto.Handshake.msg_lens + _crypto.SharedKeySession.msg_lens) <= _core.MAX_HS_MSG_LEN
    assert {k: n for k, n in _core.STANZA_NAMES.items() if n != "handshake"} == _recipients.KIND_NAMES


def test_one_header_type_from_every_parse_path() -> None:
    """parse_header and Reader.header return the same type with the same fields."""
    import io

    import qeltrix_v6

    box = io.BytesIO()
    qeltrix_v6.pack(io.BytesIO(b"x" * 100), box, key=bytes(32), block_size=64)
    reader = _core.Reader(io.BytesIO(box.getvalue()))
    a, b = reader.header, _core.parse_header(reader.header_bytes)
    assert type(a) is type(b) is _core.Header
    fields = [n for n in dir(_core.Header) if not n.startswith("_")]
    assert len(fields) >= 14
    for name in fields:
        assert getattr(a, name) == getattr(b, name), name
    assert a.header_bytes == box.getvalue()[: a.header_len]
    assert not a.signed
