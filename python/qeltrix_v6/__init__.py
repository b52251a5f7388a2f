"""Qeltrix V6: encrypted, seekable, streaming containers.

Data is split into blocks that are each encrypted and authenticated under their own
content-derived key, with an encrypted index, so any byte range of a huge encrypted file is
read by decrypting only the blocks that cover it. See docs/FORMAT.md for the format.

>>> import io, qeltrix_v6
>>> box = io.BytesIO()
>>> _ = qeltrix_v6.pack(io.BytesIO(b"attack at dawn"), box, key=bytes(32))
>>> qeltrix_v6.seek_extract(io.BytesIO(box.getvalue()), 10, 4, key=bytes(32))
b'dawn'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._container import (
    DEFAULT_BLOCK_SIZE,
    ContainerFile,
    ContainerWriter,
    IncompleteContainerWarning,
    PackResult,
    open,
    pack,
    recover,
    seek_extract,
    unpack,
)
from .errors import (
    AuthenticationError,
    IntegrityError,
    LimitExceededError,
    MalformedError,
    QeltrixError,
    QeltrixIOError,
    SignatureError,
    TruncatedError,
    WrongKeyError,
)

if TYPE_CHECKING:
    from ._kms import KmsConfig, KmsError, KmsUnavailableError
    from ._signed_url import sign_url
    from .archive import Archive, Member, open_archive
    from .gateway import GatewayServer
    from .server import SeekServer

# The servers, KMS, signed URLs and archives are imported on first use: a one-shot read
# (``qeltrix cat``, ``seek_extract`` from a script) needs none of them, and they pull in
# logging, http and more.
_LAZY = {
    "GatewayServer": ".gateway",
    "SeekServer": ".server",
    "KmsConfig": "._kms",
    "KmsError": "._kms",
    "KmsUnavailableError": "._kms",
    "sign_url": "._signed_url",
    "Archive": ".archive",
    "Member": ".archive",
    "open_archive": ".archive",
}


_LAZY_MODULES = frozenset({"archive", "gateway", "server"})


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _LAZY_MODULES:
        import importlib

        module = importlib.import_module(_LAZY.get(name, f".{name}"), __name__)
        value = module if name in _LAZY_MODULES else getattr(module, name)
        globals()[name] = value
        return value
    from importlib.metadata import PackageNotFoundError, version

    # __version__ is looked up lazily: importlib.metadata costs ~100 ms at import time, most of
    # a fresh process's one-shot read (seek_extract from a script).
    if name == "__version__":
        try:
            return version("qeltrix-v6")
        except PackageNotFoundError:  # running from a source tree without install
            return "0+unknown"
    raise AttributeError(f"module 'qeltrix_v6' has no attribute {name!r}")


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "Archive",
    "AuthenticationError",
    "ContainerFile",
    "ContainerWriter",
    "GatewayServer",
    "IncompleteContainerWarning",
    "IntegrityError",
    "KmsConfig",
    "KmsError",
    "KmsUnavailableError",
    "LimitExceededError",
    "MalformedError",
    "Member",
    "PackResult",
    "QeltrixError",
    "QeltrixIOError",
    "SeekServer",
    "SignatureError",
    "TruncatedError",
    "WrongKeyError",
    "__version__",
    "open",
    "open_archive",
    "pack",
    "recover",
    "seek_extract",
    "sign_url",
    "unpack",
]
