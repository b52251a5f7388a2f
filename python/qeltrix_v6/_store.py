"""Containers on object storage: ``s3://BUCKET/KEY`` wherever a container path is read or written.

The I/O is done in Rust by the ``object_store`` crate (``_core.StoreObject`` for reads,
``_core.StoreUpload`` for multipart uploads) on a tokio runtime, with the GIL released, so a
server's reader threads and a pack's encryption workers keep running while bytes move. This
module only resolves the standard AWS configuration into the crate's settings:

- credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, else the
  profile (``AWS_PROFILE``, default ``default``) in the shared credentials file
  (``AWS_SHARED_CREDENTIALS_FILE``, default ``~/.aws/credentials``) or the shared config file
  (``AWS_CONFIG_FILE``, default ``~/.aws/config``);
- region: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region``, else ``us-east-1``;
- endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the profile's ``endpoint_url``.

Secrets are never taken from the command line. ``QELTRIX_S3_RETRY_SECONDS`` bounds the time
spent retrying one request (default 30), ``QELTRIX_S3_PART_SIZE`` sets the upload part size
(default 8 MiB) and ``QELTRIX_S3_CONCURRENCY`` the parts in flight (default 4).
``QELTRIX_S3_READAHEAD_BYTES`` caps the fetched frame bytes all open objects of the process hold
together, reads ahead included (default 256 MiB; read by the Rust layer once per process).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import _core
from .errors import QeltrixIOError

if TYPE_CHECKING:
    import configparser

SCHEMES = ("s3://",)
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_CONCURRENCY = 4


def is_url(path: object) -> bool:
    """True for an ``s3://`` URL (a ``str``); paths and file objects are not."""
    return isinstance(path, str) and path.startswith(SCHEMES)


def split(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; a URL without a key is refused."""
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise QeltrixIOError(f"{url}: expected s3://BUCKET/KEY")
    return bucket, key


def _read_ini(path: str) -> configparser.RawConfigParser:
    # configparser is imported here, not at the top: only object-storage URLs read these
    # files, and it is a few ms of every process's start (issue 16).
    import configparser

    cp = configparser.RawConfigParser()
    try:
        cp.read(os.path.expanduser(path), encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as e:
        raise QeltrixIOError(f"{path}: cannot parse: {str(e).splitlines()[0]}") from None
    return cp


def _profile_settings() -> dict[str, str]:
    """The selected profile's settings: the config file's, overridden by the credentials file's."""
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    out: dict[str, str] = {}
    config = _read_ini(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
    section = "default" if profile == "default" else f"profile {profile}"
    for name in (section, profile):
        if config.has_section(name):
            out.update(config.items(name))
            break
    creds = _read_ini(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    if creds.has_section(profile):
        out.update(creds.items(profile))
    return out


def options() -> dict[str, str]:
    """The ``object_store`` S3 settings from the standard AWS environment and shared files."""
    env = os.environ
    prof = _profile_settings()
    opts: dict[str, str] = {}
    key_id = env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    token = env.get("AWS_SESSION_TOKEN")
    if not (key_id and secret):
        key_id, secret = prof.get("aws_access_key_id"), prof.get("aws_secret_access_key")
        token = prof.get("aws_session_token")
    if not (key_id and secret):
        raise QeltrixIOError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile "
            "in ~/.aws/credentials (AWS_PROFILE selects it)"
        )
    opts["aws_access_key_id"] = key_id
    opts["aws_secret_access_key"] = secret
    if token:
        opts["aws_session_token"] = token
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or prof.get("region") or "us-east-1"
    opts["aws_region"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or prof.get("endpoint_url")
    if endpoint:
        opts["aws_endpoint"] = endpoint
    return opts


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise QeltrixIOError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise QeltrixIOError(f"{name} must not be negative")
    return value


def retry_seconds() -> float:
    return _env_number("QELTRIX_S3_RETRY_SECONDS", 30.0)


def open_object(url: str, *, whole: bool = False) -> Any:
    """Open ``url`` for random reads: one GET (the header), pinned to its ETag from then on.
    ``whole``: the caller reads the whole container next, so that GET streams the object on."""
    bucket, key = split(url)
    _env_number("QELTRIX_S3_READAHEAD_BYTES", 256 << 20)  # a bad value is said here, not ignored
    return _core.StoreObject(url, bucket, key, options(), 65536, retry_seconds(), whole)


def split_prefix(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b/")``; ``s3://bucket`` -> ``("bucket", "")``."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or "//" in prefix:
        raise QeltrixIOError(f"{url}: expected s3://BUCKET or s3://BUCKET/PREFIX")
    return bucket, prefix + "/" if prefix else ""


def list_level(bucket: str, prefix: str) -> tuple[list[str], list[tuple[str, int, str | None, int]]]:
    """One ``/``-delimited level under ``prefix`` (``""`` or ending in ``/``), by ListObjectsV2:
    the sub-prefix names and the objects as ``(name, size, etag, mtime)``, names relative."""
    return _core.store_list(f"s3://{bucket}/{prefix}", bucket, prefix, options(), retry_seconds())


def create_upload(url: str, *, force: bool, part_size: int | None = None, if_match: str | None = None) -> Any:
    """Start a multipart upload to ``url``; ``complete()`` publishes it, ``abort()`` discards it.
    With ``if_match``, ``complete()`` first checks the object still has that ETag."""
    bucket, key = split(url)
    size = int(part_size if part_size is not None else _env_number("QELTRIX_S3_PART_SIZE", DEFAULT_PART_SIZE))
    concurrency = int(_env_number("QELTRIX_S3_CONCURRENCY", DEFAULT_CONCURRENCY))
    return _core.StoreUpload(url, bucket, key, options(), size, concurrency, force, retry_seconds(), if_match)


def create_sink(url: str) -> Any:
    """A sink gateway's destination ``s3://BUCKET/PREFIX``: each stream becomes the object
    ``PREFIX/stream-MS-ID.qltx`` through its own multipart upload. One listing checks now that
    the bucket answers with these credentials."""
    bucket, prefix = split_prefix(url)
    opts = options()
    size = int(_env_number("QELTRIX_S3_PART_SIZE", DEFAULT_PART_SIZE))
    concurrency = int(_env_number("QELTRIX_S3_CONCURRENCY", DEFAULT_CONCURRENCY))
    list_level(bucket, prefix)
    return _core.StoreSink(bucket, prefix, opts, size, concurrency, retry_seconds())


class ObjectFile:
    """A read-only ``seek``/``read`` view of an opened object, for code written against files."""

    def __init__(self, url: str) -> None:
        self.obj = open_object(url)
        self.pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else int(self.obj.size) + pos)
        return self.pos

    def read(self, n: int) -> bytes:
        data: bytes = self.obj.read(self.pos, n)
        self.pos += len(data)
        return data

    def __enter__(self) -> ObjectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
