"""The Rust/Python contract (rust/qeltrix-py/src/calls.rs, qeltrix_v6._contract): every method
or attribute the Rust core uses by name exists on every Python class that implements it, and
takes the number of positional arguments Rust passes."""

from __future__ import annotations

import pytest
from qeltrix_v6 import _contract, _core, _crypto, errors

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
