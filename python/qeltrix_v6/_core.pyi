"""Type stubs for the Rust extension module ``qeltrix_v6._core``."""

from collections.abc import Callable
from typing import Any, Self, final

__all__ = [
    "ARGON2ID_MAX_LANES",
    "ARGON2ID_MAX_M_COST_KIB",
    "ARGON2ID_MAX_T_COST",
    "CIPHER_AES_256_GCM",
    "CIPHER_CHACHA20_POLY1305",
    "CONTAINER_ID_LEN",
    "DEFAULT_BLOCK_SIZE",
    "ERROR_CLASSES",
    "FORMAT_VERSION",
    "FRAME_DIGEST_LEN",
    "HEADER_FIXED_LEN",
    "HEADER_FLAG_ARCHIVE",
    "HEADER_FLAG_PERMUTED",
    "HEADER_FLAG_SIGNED",
    "HS_MAGIC",
    "HS_MSG1_LEN",
    "HS_MSG2_LEN",
    "HS_MSG3_LEN",
    "INDEX_ENTRY_LEN",
    "INDEX_FLAG_INCOMPLETE",
    "INDEX_FOOTER_MIN_LEN",
    "KIND_ARGON2ID",
    "KIND_HANDSHAKE",
    "KIND_KEY",
    "KIND_KMS",
    "KIND_PBKDF2",
    "KIND_RSA_OAEP",
    "KIND_X25519",
    "KMS_MAX_BLOB_LEN",
    "KMS_MAX_KEY_ID_LEN",
    "MAGIC",
    "MAX_BLOCK_COUNT",
    "MAX_BLOCK_SIZE",
    "MAX_HEADER_LEN",
    "MAX_HS_MSG_LEN",
    "MAX_RECIPIENTS",
    "MAX_STANZA_BODY_LEN",
    "MAX_STREAM_BLOCK_SIZE",
    "MAX_STREAM_HEADER_LEN",
    "META_FLAG_FINAL",
    "META_FRAME_LEN",
    "META_PT_LEN",
    "MIN_BLOCK_SIZE",
    "MK_LEN",
    "NONCE_LEN",
    "PBKDF2_MAX_ITERATIONS",
    "PBKDF2_MIN_ITERATIONS",
    "PYTHON_CALLS",
    "RSA_MAX_BITS",
    "RSA_MAX_SPKI_LEN",
    "RSA_MIN_BITS",
    "SALT_LEN",
    "SIGNATURE_LEN",
    "SIGNER_PUB_LEN",
    "SIG_FIXED_LEN",
    "SK_MAGIC",
    "SK_MSG1_LEN",
    "SK_MSG2_LEN",
    "SK_NONCE_LEN",
    "STANZA_NAMES",
    "TAG_LEN",
    "TRAILER_LEN",
    "TRAILER_MAGIC",
    "X25519_BODY_LEN",
    "X25519_LEN",
    "BlockCache",
    "GatewayCore",
    "Header",
    "Reader",
    "SeekServerCore",
    "StoreObject",
    "StoreSink",
    "StoreUpload",
    "default_perm_window",
    "encode_header_unsealed",
    "encode_signature_section",
    "gateway_open_frame",
    "gateway_seal_frame",
    "pack_stream",
    "parse_header",
    "perm_forward",
    "recover_stream_file",
    "recover_stream_store",
    "signed_message",
    "store_list",
]

# Format constants (rust/qeltrix-py/src/constants.rs, defined in qeltrix-format).
FORMAT_VERSION: int
TAG_LEN: int
NONCE_LEN: int
MK_LEN: int
SALT_LEN: int
CONTAINER_ID_LEN: int
META_PT_LEN: int
META_FRAME_LEN: int
TRAILER_LEN: int
INDEX_ENTRY_LEN: int
INDEX_FOOTER_MIN_LEN: int
HEADER_FIXED_LEN: int
MIN_BLOCK_SIZE: int
MAX_BLOCK_SIZE: int
DEFAULT_BLOCK_SIZE: int
MAX_STREAM_BLOCK_SIZE: int
MAX_HEADER_LEN: int
MAX_STREAM_HEADER_LEN: int
MAX_RECIPIENTS: int
MAX_STANZA_BODY_LEN: int
MAX_BLOCK_COUNT: int
HEADER_FLAG_PERMUTED: int
HEADER_FLAG_SIGNED: int
HEADER_FLAG_ARCHIVE: int
META_FLAG_FINAL: int
INDEX_FLAG_INCOMPLETE: int
CIPHER_AES_256_GCM: int
CIPHER_CHACHA20_POLY1305: int
KIND_KEY: int
KIND_ARGON2ID: int
KIND_PBKDF2: int
KIND_X25519: int
KIND_RSA_OAEP: int
KIND_KMS: int
KIND_HANDSHAKE: int
X25519_BODY_LEN: int
RSA_MIN_BITS: int
RSA_MAX_BITS: int
RSA_MAX_SPKI_LEN: int
KMS_MAX_KEY_ID_LEN: int
KMS_MAX_BLOB_LEN: int
ARGON2ID_MAX_T_COST: int
ARGON2ID_MAX_M_COST_KIB: int
ARGON2ID_MAX_LANES: int
PBKDF2_MIN_ITERATIONS: int
PBKDF2_MAX_ITERATIONS: int
SIG_FIXED_LEN: int
SIGNER_PUB_LEN: int
SIGNATURE_LEN: int
FRAME_DIGEST_LEN: int
X25519_LEN: int
HS_MSG1_LEN: int
HS_MSG2_LEN: int
HS_MSG3_LEN: int
SK_NONCE_LEN: int
SK_MSG1_LEN: int
SK_MSG2_LEN: int
MAX_HS_MSG_LEN: int
MAGIC: bytes
TRAILER_MAGIC: bytes
HS_MAGIC: bytes
SK_MAGIC: bytes
STANZA_NAMES: dict[int, str]
PYTHON_CALLS: list[tuple[str, str, int | None]]
ERROR_CLASSES: list[str]

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

@final
class BlockCache:
    def __new__(cls, max_bytes: int) -> Self: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def max_bytes(self) -> int: ...

@final
class StoreObject:
    """An ``s3://`` object opened for ranged reads pinned to the ETag seen at open."""
    def __new__(
        cls,
        url: str,
        bucket: str,
        key: str,
        options: dict[str, str],
        head_bytes: int = 65536,
        retry_seconds: float = 30.0,
        whole: bool = False,
    ) -> Self: ...
    def read(self, pos: int, n: int) -> bytes: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str | None: ...
    @property
    def last_modified(self) -> int: ...
    @property
    def gets(self) -> int: ...
    @property
    def url(self) -> str: ...

def store_list(
    url: str, bucket: str, prefix: str, options: dict[str, str], retry_seconds: float = 30.0
) -> tuple[list[str], list[tuple[str, int, str | None, int]]]:
    """One ``/``-delimited level under ``prefix``: sub-prefixes and ``(name, size, etag, mtime)``."""

@final
class StoreUpload:
    """A multipart upload of a container to an ``s3://`` URL."""
    def __new__(
        cls,
        url: str,
        bucket: str,
        key: str,
        options: dict[str, str],
        part_size: int = ...,
        concurrency: int = 4,
        force: bool = False,
        retry_seconds: float = 30.0,
        if_match: str | None = None,
    ) -> Self: ...
    def complete(self) -> None: ...
    def abort(self) -> None: ...
    @property
    def url(self) -> str: ...

@final
class StoreSink:
    """A sink gateway's ``s3://BUCKET/PREFIX``: one multipart upload per stream."""
    def __new__(
        cls,
        bucket: str,
        prefix: str,
        options: dict[str, str],
        part_size: int = ...,
        concurrency: int = 4,
        retry_seconds: float = 30.0,
    ) -> Self: ...
    @property
    def url(self) -> str: ...

def recover_stream_store(
    src: StoreObject, dst: str | StoreUpload, keys: Any
) -> tuple[int, int, bool, str | None, int]: ...

@final
class Header:
    """A parsed header (FORMAT.md section 3): what ``parse_header`` and ``Reader.header`` return."""
    @property
    def format_version(self) -> int: ...
    @property
    def header_len(self) -> int: ...
    @property
    def header_flags(self) -> int: ...
    @property
    def signed(self) -> bool: ...
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
    def header_bytes(self) -> bytes: ...
    @property
    def header_checksummed(self) -> bytes: ...
    @property
    def header_sha256(self) -> bytes: ...
    @property
    def header_maced(self) -> bytes: ...
    @property
    def header_mac(self) -> bytes: ...

@final
class Reader:
    @property
    def header(self) -> Header: ...
    def __new__(cls, src: int | Any, cache_blocks: int = ..., block_cache: BlockCache | None = None) -> Self: ...
    def load_index(self, keys: Any) -> None: ...
    def read_at(self, pos: int, n: int) -> bytes: ...
    def read_block(self, i: int) -> bytes: ...
    def read_ahead(self, pos: int, n: int) -> None: ...
    def block_info(self, i: int) -> tuple[int, int, int]: ...
    def signature_parts(self) -> tuple[bytes, bytes, bytes] | None: ...
    def footer(self) -> tuple[bytes, int]: ...
    def require_frame_digests(self) -> None: ...
    def set_window(self, offset: int, size: int) -> None: ...
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

@final
class SeekServerCore:
    def __new__(
        cls,
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
        access_log_format: str = "combined",
        metrics: tuple[str, int] | None = None,
        verify_url: Callable[[str, str], str] | None = None,
        cors_origins: list[str] | None = None,
        cache_control: str | None = None,
        list_directories: bool = False,
        open_member: Callable[[str, str], Reader] | None = None,
        remote_ttl: float | None = None,
        open_whole: Callable[[str], Reader] | None = None,
    ) -> Self: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def metrics_address(self) -> tuple[str, int] | None: ...
    @property
    def running(self) -> bool: ...
    def stats(self) -> list[tuple[str, int]]: ...
    def stop(self, drain: float = 0.0) -> int: ...

@final
class GatewayCore:
    def __new__(
        cls,
        mode: str,
        host: str,
        port: int,
        keyring: Any,
        target: str | None = None,
        sink_dir: str | None = None,
        sink_raw: bool = False,
        block_size: int = ...,
        flush_delay: float = 0.0,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        stats_interval: float = 0.0,
        handshake_timeout: float = 10.0,
        signer: Any = None,
        metrics: tuple[str, int] | None = None,
        sink_store: StoreSink | None = None,
    ) -> Self: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def metrics_address(self) -> tuple[str, int] | None: ...
    def stop_accepting(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def stop(self) -> None: ...

def recover_stream_file(src: str, dst: str, keys: Any) -> tuple[int, int, bool, str | None]: ...
def gateway_seal_frame(keys: Any, block_index: int, meta_flags: int, pt: bytes) -> bytes:
    """The gateway core's sealing of one stream frame (the code its workers run)."""

def gateway_open_frame(keys: Any, buf: bytes) -> tuple[bytes, bytes | None]:
    """The gateway core's opening of the frame at the start of ``buf``: ``(meta_pt, plaintext
    or None when the frame is not whole in buf)``."""

def parse_header(data: bytes) -> Header: ...
