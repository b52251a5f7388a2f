"""Patch a few byte ranges of an ``s3://`` object without downloading the rest of it.

``passwd`` and ``recipients add|remove`` change only the header (same length, offset 0) and,
for a signed container, the signature section at the end. On object storage that is a new
object assembled by the server: a multipart upload whose parts are the patched bytes (the
header plus enough following bytes, fetched with a ranged GET, to reach S3's 5 MiB minimum
part size) and server-side copies of the unchanged ranges (``UploadPartCopy``, at most 5 GiB
each). A small object (under :data:`SMALL_OBJECT`) is fetched whole, patched and written with
one conditional ``PutObject`` instead.

Every step is conditional on the ETag seen when the container was opened: the ranged GETs
(``If-Match``), each copy (``x-amz-copy-source-if-match``), the completion and the small
``PutObject`` (``If-Match``). Servers that ignore the conditions on copies and completions
(moto does) are covered by a ``HEAD`` just before completing; a writer replacing the object in
the moment between that ``HEAD`` and the completion is the window left on such servers. Any
failure aborts the multipart upload, so no part is left behind.

``object_store`` has no ``UploadPartCopy``: this module uses ``boto3`` (the ``s3`` extra),
configured from the same settings as the Rust I/O (:func:`qeltrix_v6._store.options`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import _store
from .errors import QeltrixIOError

MIN_PART = 5 << 20  # S3's smallest part but the last
MAX_PART = 5 << 30  # S3's largest part (and largest UploadPartCopy range)
SMALL_OBJECT = 2 * MIN_PART  # below this, one GET of everything and one PutObject

__all__ = ["MAX_PART", "MIN_PART", "SMALL_OBJECT", "client", "patch_object", "plan_parts"]


def client() -> Any:
    """A boto3 S3 client with the settings of :func:`qeltrix_v6._store.options`."""
    try:
        import boto3  # type: ignore[import-untyped,unused-ignore]
        from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise QeltrixIOError(
            "changing a container on s3:// needs boto3 (server-side copy): pip install 'qeltrix-v6[s3]'"
        ) from None
    opts = _store.options()
    timeout = max(_store.retry_seconds(), 5.0)
    cfg = Config(
        connect_timeout=10,
        read_timeout=max(timeout, 120.0),
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},  # as object_store does by default
    )
    return boto3.client(
        "s3",
        region_name=opts["aws_region"],
        endpoint_url=opts.get("aws_endpoint"),
        aws_access_key_id=opts["aws_access_key_id"],
        aws_secret_access_key=opts["aws_secret_access_key"],
        aws_session_token=opts.get("aws_session_token"),
        config=cfg,
    )


def plan_parts(size: int, patches: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    """The parts of the new object: ``("data", start, end)`` (fetched and patched here) or
    ``("copy", start, end)`` (server-side copy), covering ``[0, size)`` in order.

    ``patches`` are ``(offset, length)`` ranges to replace. Every part but the last is at least
    :data:`MIN_PART`, every part at most :data:`MAX_PART`; copies are as large as possible.
    """
    regions: list[list[int]] = []
    for off, n in sorted(patches):
        if off < 0 or n <= 0 or off + n > size:
            raise ValueError(f"patch {off}+{n} outside an object of {size} bytes")
        start, end = off, off + n
        if end < size:
            end = min(size, max(end, start + MIN_PART))  # a data part in the middle needs 5 MiB
        if regions and start <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], end)
        else:
            regions.append([start, end])
    if not regions:
        raise ValueError("nothing to patch")
    if regions[0][0] < MIN_PART:
        regions[0][0] = 0  # a copy before it would be a part under 5 MiB
    # Gaps shorter than a part are fetched too: merge them into the region before.
    merged: list[list[int]] = [regions[0]]
    for start, end in regions[1:]:
        if start - merged[-1][1] < MIN_PART:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    out: list[tuple[str, int, int]] = []
    pos = 0
    for start, end in merged:
        if start > pos:
            out.extend(_copies(pos, start))
        out.append(("data", start, end))
        pos = end
    if pos < size:
        out.extend(_copies(pos, size))
    return out


def _copies(start: int, end: int) -> list[tuple[str, int, int]]:
    n = -(-(end - start) // MAX_PART)
    step = -(-(end - start) // n)
    return [("copy", a, min(end, a + step)) for a in range(start, end, step)]


def _error(url: str, e: BaseException) -> QeltrixIOError:
    code = ""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        code = str(resp.get("Error", {}).get("Code", ""))
    if code in ("PreconditionFailed", "412"):
        return QeltrixIOError(f"{url} was replaced by another writer while it was being changed; nothing written")
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return QeltrixIOError(f"{url}: {text}; nothing written")


def patch_object(obj: Any, patches: list[tuple[int, bytes]], s3: Any = None) -> None:
    """Replace ``patches`` (``(offset, bytes)``) in the opened ``obj`` (a ``_core.StoreObject``),
    conditional on the ETag it was opened at, with the boto3 client ``s3`` (:func:`client` if
    None). Raises :class:`QeltrixIOError` with one line."""
    url = str(obj.url)
    etag = obj.etag
    if not etag:
        raise QeltrixIOError(f"{url}: the server gave no ETag, so a change cannot be made safely; nothing written")
    size = int(obj.size)
    bucket, key = _store.split(url)
    api = s3 if s3 is not None else client()

    def patched(start: int, end: int) -> bytes:
        buf = bytearray(obj.read(start, end - start))  # a ranged GET with If-Match: etag
        if len(buf) != end - start:
            raise QeltrixIOError(f"{url}: short read while changing it; nothing written")
        for off, data in patches:
            lo, hi = max(off, start), min(off + len(data), end)
            if lo < hi:
                buf[lo - start : hi - start] = data[lo - off : hi - off]
        return bytes(buf)

    if size < SMALL_OBJECT:
        body = patched(0, size)
        try:
            api.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)
        except Exception as e:
            raise _error(url, e) from None
        return

    plan = plan_parts(size, [(off, len(data)) for off, data in patches])
    try:
        upload_id = api.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    except Exception as e:
        raise _error(url, e) from None
    try:
        parts = []
        for number, (kind, start, end) in enumerate(plan, 1):
            if kind == "data":
                r = api.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=patched(start, end)
                )
                part_etag = r["ETag"]
            else:
                r = api.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": key},
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    CopySourceIfMatch=etag,
                )
                part_etag = r["CopyPartResult"]["ETag"]
            parts.append({"PartNumber": number, "ETag": part_etag})
        # Servers that ignore the conditions above (and IfMatch below) still answer HEAD truly.
        if api.head_object(Bucket=bucket, Key=key).get("ETag") != etag:
            raise QeltrixIOError(f"{url} was replaced by another writer while it was being changed; nothing written")
        api.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfMatch=etag
        )
    except BaseException as e:
        with contextlib.suppress(Exception):  # the first error is the one to report
            api.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        if isinstance(e, QeltrixIOError) or not isinstance(e, Exception):
            raise
        raise _error(url, e) from None
