"""``qeltrix recover`` on object storage: rebuild a stored stream's index from an ``s3://`` object.

A sink gateway writing to ``s3://BUCKET/PREFIX`` uploads each stream as a multipart upload to
its final key (README "Containers on object storage"): nothing is visible until the stream
ends. A sink killed on the spot (SIGKILL, power loss) cannot finish or abort it, so the parts
it uploaded stay in an unfinished multipart upload, which S3 cannot read. Recovering such a
key first completes that upload with the parts it holds, in order from the first (each a
whole ``QELTRIX_S3_PART_SIZE`` of the stream: a stored stream without an index, like a local
sink's ``.part`` file), then reads the object with ranged GETs and keeps every frame that
authenticates. Completing needs ``ListMultipartUploads``/``ListParts``, which ``object_store``
does not offer: that step uses ``boto3`` (the ``s3`` extra), as :mod:`._s3rewrite` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from . import _core, _s3rewrite, _store
from .errors import QeltrixIOError


def complete_abandoned_upload(url: str, s3: Any = None) -> int:
    """Complete the newest unfinished multipart upload to ``url`` with its first parts (those
    numbered 1, 2, ... without a gap). Returns how many parts the object now holds; raises
    :class:`QeltrixIOError` when there is no such upload or it holds no first part."""
    bucket, key = _store.split(url)
    api = s3 if s3 is not None else _s3rewrite.client()
    try:
        listing = api.list_multipart_uploads(Bucket=bucket, Prefix=key)
        uploads = [u for u in listing.get("Uploads", []) if u.get("Key") == key]
    except Exception as e:
        raise _s3rewrite._error(url, e) from None
    if not uploads:
        raise QeltrixIOError(f"{url}: no such object, and no unfinished upload to it to recover")
    upload = max(uploads, key=lambda u: u.get("Initiated") or 0)
    upload_id = upload["UploadId"]
    try:
        parts: dict[int, str] = {}
        marker = 0
        while True:
            r = api.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
            for p in r.get("Parts", []):
                parts[int(p["PartNumber"])] = p["ETag"]
            if not r.get("IsTruncated"):
                break
            marker = int(r["NextPartNumberMarker"])
        keep: list[dict[str, Any]] = []
        while len(keep) + 1 in parts:
            keep.append({"PartNumber": len(keep) + 1, "ETag": parts[len(keep) + 1]})
        if not keep:
            with contextlib.suppress(Exception):
                api.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise QeltrixIOError(
                f"{url}: the unfinished upload holds no complete first part (the writer stopped within "
                "its first QELTRIX_S3_PART_SIZE bytes): nothing to recover"
            )
        api.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": keep})
    except QeltrixIOError:
        raise
    except Exception as e:
        raise _s3rewrite._error(url, e) from None
    return len(keep)


def open_for_recovery(url: str) -> Any:
    """Open ``url`` for reading; a key with no object but an unfinished upload (a sink killed
    mid-stream) is first completed with the parts that upload holds."""
    try:
        return _store.open_object(url)
    except QeltrixIOError as e:
        if "no such object" not in str(e):
            raise
    complete_abandoned_upload(url)
    return _store.open_object(url)


def recover(
    src: Any,
    dst: str,
    unlock: Callable[[Any], Any],
    atomic_output: Callable[[str], Any],
) -> tuple[tuple[int, int, bool, str | None, int], int]:
    """Rebuild the stream ``src`` (an opened ``_core.StoreObject``) into ``dst``: an ``s3://``
    URL (a multipart upload, completed only if the whole rebuild succeeds) or a path (through
    ``atomic_output(dst)``, an :class:`AtomicOutput`). ``unlock(reader)`` checks the header and
    returns its keys. Returns the rebuild's ``(blocks, pt_len, complete, stopped, kept_len)``
    and the source's size."""
    keys = unlock(_core.Reader(src))
    if _store.is_url(dst):
        upload = atomic_output(dst)
        try:
            r = _core.recover_stream_store(src, upload, keys)
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        return r, int(src.size)
    atomic = atomic_output(dst)
    with atomic:
        r = _core.recover_stream_store(src, atomic.temp_path, keys)
        atomic.commit()
    return r, int(src.size)
