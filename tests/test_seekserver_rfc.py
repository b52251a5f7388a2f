"""SeekServer request handling against RFC 9110/9112, over real sockets on 127.0.0.1 with real
clients (http.client, urllib, curl, and raw sockets for requests those clients will not send):
range planning that bounds one request's work, preconditions, Host, the auth scheme, the
Content-Type of an encoded path, and headers every response carries."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import urllib.error
import urllib.request
from email.parser import BytesParser
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import http_request, require

KEY = bytes(range(32))
BLOCK = 4096
DATA = os.urandom(300_000)
N = len(DATA)
MAX_PARTS = 16  # rust/qeltrix-server/src/range.rs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("root")
    qeltrix_v6.pack(io.BytesIO(DATA), r / "data.bin.qltx", key=KEY, block_size=BLOCK)
    qeltrix_v6.pack(io.BytesIO(b"hello\n"), r / "file.txt.qltx", key=KEY)
    qeltrix_v6.pack(io.BytesIO(b"<p>hi</p>"), r / "page.html.qltx", key=KEY)
    return r


@pytest.fixture(scope="module")
def server(root: Path):
    with qeltrix_v6.SeekServer(root, key=KEY, header_timeout=2.0, idle_timeout=5.0) as s:
        yield s


def request(server: qeltrix_v6.SeekServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    return http_request(server.address, path, headers, method)


def raw_request(server: qeltrix_v6.SeekServer, data: bytes) -> bytes:
    with socket.create_connection(server.address, timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def multipart(headers: dict[str, str], body: bytes) -> list[tuple[str, bytes]]:
    """The (Content-Range, payload) of each part of a multipart/byteranges body."""
    ctype = headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    msg = BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    return [(p["Content-Range"], p.get_payload(decode=True)) for p in msg.get_payload()]


def spread(n: int) -> str:
    """`n` one-byte ranges, each in its own block."""
    return "bytes=" + ",".join(f"{i * BLOCK}-{i * BLOCK}" for i in range(n))


# Range planning (RFC 9110 14.2, 15.3.7.2): (Range header, status, parts as (first, last)).
# A 200 means the header was ignored and the representation is served once.
PLAN_CASES = [
    pytest.param("bytes=" + ",".join(["0-"] * 64), 200, [(0, N - 1)], id="64x bytes=0-"),
    pytest.param("bytes=" + ",".join(["-1000000"] * 64), 200, [(0, N - 1)], id="64x suffix past the length"),
    pytest.param(f"bytes=0-{N // 2},{N // 2 - 10}-", 200, [(0, N - 1)], id="two halves overlapping: more than N"),
    pytest.param(spread(64), 200, [(0, N - 1)], id="64 one-byte ranges in 64 blocks"),
    pytest.param(spread(MAX_PARTS + 1), 200, [(0, N - 1)], id="one part over the bound"),
    pytest.param(spread(MAX_PARTS), 206, [(i * BLOCK, i * BLOCK) for i in range(MAX_PARTS)], id="at the bound"),
    pytest.param(
        "bytes=0-99,50-149,1000-1099,1100-1199,5000-5009",
        206,
        [(0, 149), (1000, 1199), (5000, 5009)],
        id="overlapping and touching coalesced",
    ),
    pytest.param("bytes=5000-5009,0-9,3-20", 206, [(5000, 5009), (0, 20)], id="request order kept"),
    pytest.param("bytes=" + ",".join(f"{i}-{i}" for i in range(64)), 206, [(0, 63)], id="64 touching: one range"),
    pytest.param(f"bytes=0-9,{N - 10}-", 206, [(0, 9), (N - 10, N - 1)], id="two ranges: multipart"),
]


def check_plan(status: int, headers: dict[str, str], body: bytes, want_status: int, want) -> None:
    assert status == want_status
    assert len(body) <= N + MAX_PARTS * 200  # never more than the representation plus part heads
    if status == 200:
        assert body == DATA
        assert "content-range" not in headers
    elif len(want) == 1:
        a, b = want[0]
        assert headers["content-range"] == f"bytes {a}-{b}/{N}"
        assert body == DATA[a : b + 1]
    else:
        parts = multipart(headers, body)
        assert [cr for cr, _ in parts] == [f"bytes {a}-{b}/{N}" for a, b in want]
        assert [p for _, p in parts] == [DATA[a : b + 1] for a, b in want]


@pytest.mark.parametrize(("range_header", "status", "want"), PLAN_CASES)
def test_range_plan_with_http_client(server, range_header, status, want) -> None:
    st, h, body = request(server, "/data.bin", {"Range": range_header})
    assert int(h["content-length"]) == len(body)
    check_plan(st, h, body, status, want)


@pytest.mark.parametrize(("range_header", "status", "want"), PLAN_CASES)
def test_range_plan_with_curl(server, tmp_path, range_header, status, want) -> None:
    curl = require("curl")
    out, hdr = tmp_path / "body", tmp_path / "headers"
    cmd = [curl, "-s", "-o", str(out), "-D", str(hdr), "-H", f"Range: {range_header}", f"{server.url}/data.bin"]
    subprocess.run(cmd, check=True, timeout=30)
    lines = hdr.read_text().splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)}
    check_plan(int(lines[0].split()[1]), headers, out.read_bytes(), status, want)


def test_head_of_an_amplifying_range_announces_the_length_once(server) -> None:
    st, h, body = request(server, "/data.bin", {"Range": "bytes=" + ",".join(["0-"] * 64)}, method="HEAD")
    assert (st, int(h["content-length"]), body) == (200, N, b"")


PAST, FUTURE = "Sun, 06 Nov 1994 08:49:37 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"


def validators(server) -> tuple[str, str]:
    _, h, _ = request(server, "/data.bin", method="HEAD")
    return h["etag"], h["last-modified"]


# Preconditions in RFC 9110 13.2.2 order: (headers, with a Range?, status). The etag and
# Last-Modified of the container replace ETAG and LM.
PRECONDITION_CASES = [
    ({"If-Match": '"other"'}, 412),
    ({"If-Match": '"other"', "Range": "bytes=0-9"}, 412),
    ({"If-Match": '"other"', "Range": "bytes=0-9,100-109"}, 412),
    ({"If-Match": "W/ETAG"}, 412),  # weak tags never match strongly (13.1.1)
    ({"If-Match": "ETAG"}, 200),
    ({"If-Match": '"other", ETAG', "Range": "bytes=0-9"}, 206),
    ({"If-Match": "*", "Range": "bytes=0-9"}, 206),
    ({"If-Unmodified-Since": PAST}, 412),
    ({"If-Unmodified-Since": PAST, "Range": "bytes=0-9"}, 412),
    ({"If-Unmodified-Since": "LM", "Range": "bytes=0-9"}, 206),
    ({"If-Unmodified-Since": FUTURE}, 200),
    ({"If-Unmodified-Since": "not a date"}, 200),  # ignored (13.1.4)
    ({"If-Match": "ETAG", "If-Unmodified-Since": PAST}, 200),  # If-Match decides (step 2)
    ({"If-Match": '"other"', "If-None-Match": "ETAG"}, 412),  # step 1 before step 3
    ({"If-Unmodified-Since": PAST, "If-Modified-Since": FUTURE}, 412),  # step 2 before step 4
    ({"If-None-Match": "ETAG", "Range": "bytes=0-9"}, 304),
    ({"If-None-Match": "W/ETAG"}, 304),  # weak comparison (13.1.2)
    ({"If-Modified-Since": "LM"}, 304),
    ({"If-None-Match": '"other"', "If-Modified-Since": "LM"}, 200),  # If-None-Match decides
]


@pytest.mark.parametrize(("headers", "status"), PRECONDITION_CASES)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_preconditions(server, headers, status, method) -> None:
    etag, lm = validators(server)
    sent = {k: v.replace("ETAG", etag).replace("LM", lm) for k, v in headers.items()}
    st, h, body = request(server, "/data.bin", sent, method=method)
    assert st == status
    assert h["etag"] == etag
    if method == "HEAD" or status == 304:
        assert body == b""
    elif status == 412:
        assert body == b"precondition failed\n"
    elif status == 206:
        assert body == DATA[:10]
    else:
        assert body == DATA


def test_precondition_failed_with_urllib(server) -> None:
    req = urllib.request.Request(f"{server.url}/data.bin", headers={"If-Match": '"stale"', "Range": "bytes=0-9"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 412
    assert DATA[:10] not in e.value.read()


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


# Host (RFC 9112 3.2): (request head lines after the request line, HTTP version, status).
HOST_CASES = [
    pytest.param([], "1.1", 400, id="HTTP/1.1 without Host"),
    pytest.param(["Host: a", "Host: a"], "1.1", 400, id="two Host lines"),
    pytest.param(["Host: a", "Host: b"], "1.0", 400, id="two Host lines, HTTP/1.0"),
    pytest.param(["Host: a b"], "1.1", 400, id="space in Host"),
    pytest.param(["Host: a/b"], "1.1", 400, id="slash in Host"),
    pytest.param(["Host: a:port"], "1.1", 400, id="port not digits"),
    pytest.param(["Host: [::1"], "1.1", 400, id="unclosed IP-literal"),
    pytest.param(["Host: user@a"], "1.1", 400, id="userinfo"),
    pytest.param([], "1.0", 200, id="HTTP/1.0 without Host"),
    pytest.param(["Host: example.com"], "1.1", 200, id="name"),
    pytest.param(["Host: 127.0.0.1:8080"], "1.1", 200, id="address and port"),
    pytest.param(["Host: [::1]:8080"], "1.1", 200, id="IPv6 literal"),
    pytest.param(["Host:"], "1.1", 200, id="empty (no authority)"),
]


@pytest.mark.parametrize(("lines", "version", "status"), HOST_CASES)
def test_host_header(server, lines, version, status) -> None:
    head = "\r\n".join([f"GET /file.txt HTTP/{version}", *lines, "Connection: close", "", ""])
    reply = raw_request(server, head.encode())
    assert status_of(reply) == status
    assert (b"hello\n" in reply) == (status == 200)


def test_missing_host_closes_the_connection(server) -> None:
    # A pipelined second request after the rejected one is not answered.
    reply = raw_request(server, b"GET /file.txt HTTP/1.1\r\n\r\nGET /file.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    assert reply.count(b"HTTP/1.1") == 1


@pytest.fixture(scope="module")
def token_server(root: Path):
    with qeltrix_v6.SeekServer(root, key=KEY, token="s3cret-token") as s:
        yield s


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer s3cret-token", 200),
        ("bearer s3cret-token", 200),  # RFC 9110 11.1: the scheme is case-insensitive
        ("BEARER s3cret-token", 200),
        ("bEaReR  s3cret-token", 200),  # 1*SP
        ("Bearer S3CRET-TOKEN", 401),  # the token is not
        ("Basic s3cret-token", 401),
        ("Bearers3cret-token", 401),
        ("s3cret-token", 401),
    ],
)
def test_auth_scheme_is_case_insensitive(token_server, authorization, status) -> None:
    st, h, body = request(token_server, "/file.txt", {"Authorization": authorization})
    assert st == status
    assert (body == b"hello\n") == (status == 200)
    if status == 401:
        assert h["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/file.txt", "text/plain; charset=utf-8"),
        ("/file%2Etxt", "text/plain; charset=utf-8"),
        ("/file%2etxt", "text/plain; charset=utf-8"),
        ("/%66ile.txt", "text/plain; charset=utf-8"),
        ("/page%2Ehtml", "text/html; charset=utf-8"),
        ("/data%2Ebin", "application/octet-stream"),
    ],
)
def test_content_type_from_the_decoded_path(server, path, ctype) -> None:
    st, h, _ = request(server, path, method="HEAD")
    assert (st, h["content-type"]) == (200, ctype)
    with urllib.request.urlopen(server.url + path, timeout=10) as resp:
        assert resp.headers["Content-Type"] == ctype


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/page.html", {}, 200),
        ("GET", "/data.bin", {"Range": "bytes=0-9"}, 206),
        ("GET", "/data.bin", {"Range": "bytes=0-9,100-109"}, 206),
        ("HEAD", "/data.bin", {}, 200),
        ("GET", "/data.bin", {"Range": f"bytes={N}-"}, 416),
        ("GET", "/data.bin", {"If-None-Match": "*"}, 304),
        ("GET", "/data.bin", {"If-Match": '"x"'}, 412),
        ("GET", "/missing", {}, 404),
        ("POST", "/data.bin", {}, 405),
    ],
)
def test_nosniff_on_every_response(server, method, path, headers, status) -> None:
    st, h, _ = request(server, path, headers, method=method)
    assert (st, h["x-content-type-options"]) == (status, "nosniff")


def test_nosniff_on_401_and_400(token_server) -> None:
    st, h, _ = request(token_server, "/page.html")
    assert (st, h["x-content-type-options"]) == (401, "nosniff")
    reply = raw_request(token_server, b"GET /page.html HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"\r\nx-content-type-options: nosniff\r\n" in reply.lower()
