"""Exceptions raised by Qeltrix V6.

Every error the package raises on purpose derives from :class:`QeltrixError`, so a caller
can catch one class. The subclasses say what a user can do about it::

    QeltrixError
    ├── WrongKeyError          the passphrase or key does not open this container
    ├── IntegrityError         the bytes are not what the writer wrote
    │   ├── AuthenticationError    a MAC, AEAD tag or checksum failed (corruption or tampering)
    │   │   └── SignatureError         not signed by a required signer, or changed since signed
    │   └── TruncatedError         the container ends early (cut short, or never finished)
    ├── MalformedError         not a V6 container, or a field out of its domain (ValueError)
    │   └── LimitExceededError     a length, count or KDF parameter over a documented limit
    └── QeltrixIOError         reading or writing failed (OSError)

Authentication failures carry no detail that would help an attacker forge data.

Arguments of the wrong type or out of their range raise ``TypeError`` or ``ValueError``, as
usual in Python (a ``src``/``dst`` that is a bool, a negative file descriptor, or neither a
path, a file object nor a descriptor); a file descriptor that is not open raises
:class:`QeltrixIOError`. A pipeline worker thread that fails unexpectedly (a bug) raises
:class:`QeltrixError` itself instead of hanging or raising pyo3's ``PanicException``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "IntegrityError",
    "LimitExceededError",
    "MalformedError",
    "QeltrixError",
    "QeltrixIOError",
    "SignatureError",
    "TruncatedError",
    "WrongKeyError",
]


class QeltrixError(Exception):
    """Base class of every error Qeltrix V6 raises on purpose."""


class WrongKeyError(QeltrixError):
    """No recipient of the container opens with the given passphrase or key."""


class IntegrityError(QeltrixError):
    """The container's bytes are not those its writer produced."""


class AuthenticationError(IntegrityError):
    """A checksum, MAC or AEAD tag failed: the container is corrupt or was tampered with."""


class SignatureError(AuthenticationError):
    """A required signer's signature is missing, from another key, or does not match the
    container (its header, index or a frame changed after signing; docs/FORMAT.md section 15)."""


class TruncatedError(IntegrityError):
    """The container ends before its trailer: cut short, or a stream that never finished."""


class MalformedError(QeltrixError, ValueError):
    """The input is not a Qeltrix V6 container, or a field is outside its domain."""


class LimitExceededError(MalformedError):
    """A length, count or KDF parameter exceeds a limit of docs/FORMAT.md section 9."""


class QeltrixIOError(QeltrixError, OSError):
    """Reading the input or writing the output failed."""
