"""Type stubs for the Rust extension module ``qeltrix_v6._core``."""

from collections.abc import Callable
from typing import Any

DEFAULT_BLOCK_SIZE: int
MIN_BLOCK_SIZE: int
MAX_STREAM_HEADER_LEN: int
MAX_BLOCK_SIZE: int
ARGON2ID_MAX_M_COST_KIB: int
HEADER_FLAG_SIGNED: int
SIG_FIXED_LEN: int

def encode_header_unsealed(
    header_flags: int,
    cipher_id: int,
    block_size: int,
    perm_window: int,
    container_id: bytes,
    stanzas: list[tuple[int, bytes]],
    min_header_len: int = 0,
) -> bytes: ...
def perm_forward(k_perm: bytes, window: int, k: int, j: int) -> int: ...
def default_perm_window(block_size: int) -> int: ...
def signed_message(
    header_sha256: bytes,
    block_count: int,
    frame_digests_sha256: bytes,
    footer_sha256: bytes,
    footer_offset: int,
    signer_pub: bytes,
) -> bytes: ...
def encode_signature_section(signer_pub: bytes, frame_digests: bytes, signature: bytes) -> bytes: ...
def pack_stream(
    src: int | Any,
    dst: int | Any,
    keys: Any,
    header: bytes,
    block_size: int,
    perm_window: int,
    k_perm: bytes,
    workers: int | None = None,
    progress: Callable[[int, int | None], object] | None = None,
    total_hint: int | None = None,
    signer: Any = None,
) -> tuple[int, int, int]: ...

class BlockCache:
    def __init__(self, max_bytes: int) -> None: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def max_bytes(self) -> int: ...

class Reader:
    def __init__(self, src: int | Any, cache_blocks: int = 8, block_cache: BlockCache | None = None) -> None: ...
    def load_index(self, keys: Any) -> None: ...
    def read_at(self, pos: int, n: int) -> bytes: ...
    def read_block(self, i: int) -> bytes: ...
    def block_info(self, i: int) -> tuple[int, int, int]: ...
    def signature_parts(self) -> tuple[bytes, bytes, bytes] | None: ...
    def footer(self) -> tuple[bytes, int]: ...
    def require_frame_digests(self) -> None: ...
    @property
    def frame_digests_required(self) -> bool: ...
    @property
    def header_bytes(self) -> bytes: ...
    def unpack_to(
        self,
        dst: int | Any,
        workers: int | None = None,
        progress: Callable[[int, int | None], object] | None = None,
    ) -> int: ...
    @property
    def file_len(self) -> int: ...
    @property
    def format_version(self) -> int: ...
    @property
    def header_len(self) -> int: ...
    @property
    def header_flags(self) -> int: ...
    @property
    def cipher_id(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def perm_window(self) -> int: ...
    @property
    def container_id(self) -> bytes: ...
    @property
    def stanzas(self) -> list[tuple[int, bytes]]: ...
    @property
    def header_checksummed(self) -> bytes: ...
    @property
    def header_sha256(self) -> bytes: ...
    @property
    def header_maced(self) -> bytes: ...
    @property
    def header_mac(self) -> bytes: ...
    @property
    def pt_total_len(self) -> int: ...
    @property
    def block_count(self) -> int: ...
    @property
    def incomplete(self) -> bool: ...

class SeekServerCore:
    def __init__(
        self,
        root: str,
        open: Callable[[str], Reader],
        log: Callable[[str, str], object] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_connections: int = 1024,
        max_connections_per_client: int = 64,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        access_log: bool = False,
        workers: int = 2,
    ) -> None: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> None: ...

class GatewayCore:
    def __init__(
        self,
        mode: str,
        host: str,
        port: int,
        keyring: Any,
        target: str | None = None,
        sink_dir: str | None = None,
        sink_raw: bool = False,
        block_size: int = 262144,
        flush_delay: float = 0.0,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        stats_interval: float = 0.0,
        handshake_timeout: float = 10.0,
        signer: Any = None,
    ) -> None: ...
    @property
    def address(self) -> tuple[str, int]: ...
    def stats(self) -> dict[str, Any]: ...
    def stop(self) -> None: ...

def recover_stream_file(src: str, dst: str, keys: Any) -> tuple[int, int, bool, str | None]: ...
def parse_header(data: bytes) -> dict[str, Any]: ...
