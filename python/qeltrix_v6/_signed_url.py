"""Expiring signed URLs for the SeekServer (README "Browsers and CDNs", docs/SECURITY.md).

A signed URL lets a client that cannot send an ``Authorization`` header (a browser's
``<video src=...>``, a CDN fetching on a user's behalf) read one path until a time::

    /a/b.mp4?qx-expires=1700000000&qx-sig=<43 characters of base64url>

``qx-sig`` is ``base64url_nopad(HMAC-SHA256(url_key, "qeltrix-v6 signed url" || LF ||
decimal(qx-expires) || LF || path))`` (:func:`qeltrix_v6._crypto.signed_url_mac`), where
``path`` is the request path percent-decoded once as UTF-8, so ``/a%2Eb`` and ``/a.b`` are the
same resource and one signature covers exactly one path. ``qx-expires`` is a Unix time in
seconds (canonical decimal); the URL is good up to and including that second. Other query
parameters are ignored and not covered. The method (GET or HEAD), the host and the headers
(``Range`` included) are not covered.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import time
import urllib.parse

from . import _crypto

__all__ = ["sign_url"]

EXPIRES_PARAM = "qx-expires"
SIG_PARAM = "qx-sig"
URL_KEY_LEN = 32
SIG_TEXT_LEN = 43  # base64url of 32 bytes, no padding
MAX_EXPIRES = 2**40  # year 36812: far enough, and small enough for every integer type


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != URL_KEY_LEN:
        raise ValueError(f"a URL key is {URL_KEY_LEN} bytes (make one with 'qeltrix keygen -o FILE')")
    return bytes(key)


def normalise_path(url_path: str) -> str:
    """The signed form of a URL path: percent-decoded once as UTF-8, starting with ``/``."""
    path = urllib.parse.unquote(url_path, encoding="utf-8", errors="strict")
    return path if path.startswith("/") else "/" + path


def sign_url(
    path: str,
    *,
    key: bytes,
    expires: float | datetime.timedelta = 600,
    expires_at: int | None = None,
    base: str | None = None,
) -> str:
    """``path`` with a signature query string that a :class:`~qeltrix_v6.SeekServer` started
    with ``url_key=key`` accepts until ``expires`` seconds from now (or the Unix time
    ``expires_at``). ``path`` is a URL path (``%``-escapes are decoded; write a literal ``%``
    as ``%25``); the result is re-encoded, and prefixed with ``base`` if given.

    >>> sign_url("/media/a b.mp4", key=bytes(range(32)), expires_at=1700000000)
    '/media/a%20b.mp4?qx-expires=1700000000&qx-sig=0VxIZaFXopCTVefao1DYKj40i8sYDJootcEFe96r2YQ'
    >>> sign_url("a b.mp4", key=bytes(range(32)), expires=3600, base="https://media.example/")
    'https://media.example/a%20b.mp4?qx-expires=...&qx-sig=...'
    """
    key = _check_key(key)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):
        raise ValueError("give the path only (e.g. /a.mp4), and the scheme and host as the base")
    if expires_at is None:
        seconds = expires.total_seconds() if isinstance(expires, datetime.timedelta) else float(expires)
        if not seconds > 0:
            raise ValueError("expires must be a positive number of seconds")
        expires_at = int(time.time() + seconds)
    if not 0 <= expires_at <= MAX_EXPIRES:
        raise ValueError(f"expires_at must be a Unix time between 0 and {MAX_EXPIRES}")
    decoded = normalise_path(path)
    sig = _crypto.signed_url_mac(key, expires_at, decoded)
    query = f"{EXPIRES_PARAM}={expires_at}&{SIG_PARAM}={base64.urlsafe_b64encode(sig).rstrip(b'=').decode('ascii')}"
    url = f"{urllib.parse.quote(decoded, safe='/~')}?{query}"
    return base.rstrip("/") + url if base else url


def check(key: bytes, url_path: str, query: str, now: float | None = None) -> str:
    """``"valid"``, ``"expired"`` or ``"invalid"`` for a request path and raw query string.
    The server calls this (through its binding) for requests whose query names ``qx-sig``."""
    values: dict[str, list[str]] = {EXPIRES_PARAM: [], SIG_PARAM: []}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name in values:
            values[name].append(value)
    if len(values[EXPIRES_PARAM]) != 1 or len(values[SIG_PARAM]) != 1:
        return "invalid"
    expires_text, sig_text = values[EXPIRES_PARAM][0], values[SIG_PARAM][0]
    # Canonical forms only, so that one signature has one spelling.
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 13:
        return "invalid"
    expires = int(expires_text)
    if str(expires) != expires_text or expires > MAX_EXPIRES or len(sig_text) != SIG_TEXT_LEN:
        return "invalid"
    try:
        sig = base64.urlsafe_b64decode(sig_text + "=")
        path = normalise_path(url_path)
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return "invalid"
    if base64.urlsafe_b64encode(sig).rstrip(b"=").decode("ascii") != sig_text:
        return "invalid"
    if not _crypto.signed_url_mac_ok(key, expires, path, sig):
        return "invalid"
    return "valid" if (time.time() if now is None else now) <= expires else "expired"
