"""SeekServer over real sockets on 127.0.0.1, with real clients: http.client, curl, ffprobe,
ffmpeg and headless Chromium. Every body is compared byte for byte with the plaintext."""

from __future__ import annotations

import concurrent.futures
import datetime
import http.client
import io
import os
import shutil
import socket
import ssl
import subprocess
import time
from email.parser import BytesParser
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import http_request, require, self_signed_cert

KEY = bytes(range(32))
DATA = os.urandom(300_000)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("root")
    (r / "media").mkdir()
    qeltrix_v6.pack(io.BytesIO(DATA), r / "media" / "data.bin.qltx", key=KEY, block_size=4096)
    qeltrix_v6.pack(io.BytesIO(b""), r / "empty.txt.qltx", key=KEY)
    qeltrix_v6.pack(io.BytesIO(DATA[:50_000]), r / "other-key.bin.qltx", key=os.urandom(32))
    # A container whose third frame is damaged: the first blocks are fine, block 2 is not.
    raw = bytearray()
    qeltrix_v6.pack(io.BytesIO(DATA[:40_000]), r / "tampered.bin.qltx", key=KEY, block_size=4096, permute=False)
    raw = bytearray((r / "tampered.bin.qltx").read_bytes())
    raw[4096 + 2 * (104 + 4096 + 16) + 500] ^= 1
    (r / "tampered.bin.qltx").write_bytes(bytes(raw))
    (r / "not-a-container.bin.qltx").write_bytes(os.urandom(10_000))
    (r.parent / "outside.bin.qltx").write_bytes(b"secret")
    os.symlink(r.parent / "outside.bin.qltx", r / "escape.bin.qltx")
    return r


@pytest.fixture(scope="module")
def server(root: Path):
    with qeltrix_v6.SeekServer(root, key=KEY, header_timeout=2.0, idle_timeout=5.0) as s:
        yield s


def request(server: qeltrix_v6.SeekServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    return http_request(server.address, path, headers, method)


N = len(DATA)
# (Range header, status, expected body as a list of (first, last) slices; None = no body check)
RANGE_CASES = [
    (None, 200, [(0, N - 1)]),
    ("bytes=0-0", 206, [(0, 0)]),
    ("bytes=100-4195", 206, [(100, 4195)]),  # crosses a block boundary
    ("bytes=150000-", 206, [(150000, N - 1)]),
    ("bytes=-4097", 206, [(N - 4097, N - 1)]),
    (f"bytes=-{N + 10}", 206, [(0, N - 1)]),
    (f"bytes={N - 5}-{N + 100}", 206, [(N - 5, N - 1)]),  # past the end: clipped
    ("bytes=0-9,40-49,-4097", 206, [(0, 9), (40, 49), (N - 4097, N - 1)]),  # several
    ("bytes=0-9,20-29,5-25", 206, [(0, 29)]),  # overlapping: coalesced into one range
    (f"bytes={N}-", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=9-5", 200, [(0, N - 1)]),  # invalid syntax: ignored
    ("bytes=x-y", 200, [(0, N - 1)]),
    ("pages=1-2", 200, [(0, N - 1)]),
]


def check_body(status: int, headers: dict[str, str], body: bytes, slices) -> None:
    if slices is None:
        assert headers["content-range"] == f"bytes */{N}"
        return
    if len(slices) == 1:
        a, b = slices[0]
        assert body == DATA[a : b + 1]
        assert int(headers["content-length"]) == len(body)
        if status == 206:
            assert headers["content-range"] == f"bytes {a}-{b}/{N}"
        return
    ctype = headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    msg = BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    parts = msg.get_payload()
    assert len(parts) == len(slices)
    for part, (a, b) in zip(parts, slices, strict=True):
        assert part["Content-Range"] == f"bytes {a}-{b}/{N}"
        assert part.get_payload(decode=True) == DATA[a : b + 1]


@pytest.mark.parametrize(("range_header", "status", "slices"), RANGE_CASES)
def test_ranges_with_http_client(server, range_header, status, slices) -> None:
    headers = {"Range": range_header} if range_header else {}
    st, h, body = request(server, "/media/data.bin", headers)
    assert st == status
    assert h["accept-ranges"] == "bytes"
    check_body(st, h, body, slices)


@pytest.mark.parametrize(("range_header", "status", "slices"), RANGE_CASES)
def test_ranges_with_curl(server, tmp_path, range_header, status, slices) -> None:
    curl = require("curl")
    out, hdr = tmp_path / "body", tmp_path / "headers"
    cmd = [curl, "-s", "-o", str(out), "-D", str(hdr), f"{server.url}/media/data.bin"]
    if range_header:
        cmd += ["-H", f"Range: {range_header}"]
    subprocess.run(cmd, check=True, timeout=30)
    lines = hdr.read_text().splitlines()
    assert int(lines[0].split()[1]) == status
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)}
    check_body(status, headers, out.read_bytes(), slices)


def test_zero_length_file(server) -> None:
    st, h, body = request(server, "/empty.txt")
    assert (st, body, h["content-length"]) == (200, b"", "0")
    assert h["content-type"].startswith("text/plain")
    st, h, _ = request(server, "/empty.txt", {"Range": "bytes=0-"})
    assert (st, h["content-range"]) == (416, "bytes */0")


def test_head_etag_if_range_last_modified(server, root) -> None:
    st, h, body = request(server, "/media/data.bin", method="HEAD")
    assert (st, body, int(h["content-length"])) == (200, b"", N)
    etag, lm = h["etag"], h["last-modified"]
    assert etag.startswith('"') and etag.endswith('"')
    mtime = datetime.datetime.fromtimestamp(int((root / "media" / "data.bin.qltx").stat().st_mtime), datetime.UTC)
    assert lm == mtime.strftime("%a, %d %b %Y %H:%M:%S GMT")
    st, _, body = request(server, "/media/data.bin", {"Range": "bytes=5-9", "If-Range": etag})
    assert (st, body) == (206, DATA[5:10])
    st, _, body = request(server, "/media/data.bin", {"Range": "bytes=5-9", "If-Range": lm})
    assert (st, body) == (206, DATA[5:10])
    st, _, body = request(server, "/media/data.bin", {"Range": "bytes=5-9", "If-Range": '"other"'})
    assert (st, len(body)) == (200, N)
    st, _, body = request(server, "/media/data.bin", {"If-None-Match": etag})
    assert (st, body) == (304, b"")
    st, h, _ = request(server, "/media/data.bin", {"Range": "bytes=0-1"}, method="HEAD")
    assert (st, h["content-range"]) == (206, f"bytes 0-1/{N}")


def test_statuses(server) -> None:
    assert request(server, "/missing.bin")[0] == 404
    assert request(server, "/media/data.bin", method="POST")[0] == 405
    assert request(server, "/media/data.bin", method="DELETE")[1]["allow"] == "GET, HEAD"
    assert request(server, "/other-key.bin")[0] == 403
    st, _, body = request(server, "/not-a-container.bin")
    assert st == 500
    assert body.startswith(b"the container cannot be read")


def raw_request(server: qeltrix_v6.SeekServer, data: bytes) -> bytes:
    with socket.create_connection(server.address, timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "path",
    [
        "/../outside.bin",
        "/media/../../outside.bin",
        "/%2e%2e/outside.bin",
        "/%2E%2E%2Foutside.bin",
        "/media/..%2f..%2foutside.bin",
        "//etc/passwd",
        "/escape.bin",  # a symlink pointing out of the root
        "/.hidden",
        "/media%00/data.bin",
    ],
)
def test_no_path_escapes_the_root(server, path) -> None:
    resp = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status = int(resp.split(b" ", 2)[1])
    assert status in (400, 404)
    assert b"secret" not in resp


def test_malformed_requests_get_400_and_do_not_hurt_others(server) -> None:
    assert raw_request(server, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_request(server, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert request(server, "/media/data.bin", {"Range": "bytes=0-3"})[2] == DATA[:4]


def test_keep_alive_serves_many_requests_on_one_connection(server) -> None:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    sock_ids = set()
    for i in range(20):
        conn.request("GET", "/media/data.bin", headers={"Range": f"bytes={i * 1000}-{i * 1000 + 99}"})
        resp = conn.getresponse()
        assert resp.read() == DATA[i * 1000 : i * 1000 + 100]
        sock_ids.add(id(conn.sock))
    assert len(sock_ids) == 1
    conn.close()


def test_tampered_block_never_yields_plaintext(server) -> None:
    # A range inside the damaged block: a clean error status, no body bytes from it.
    st, _, body = request(server, "/tampered.bin", {"Range": "bytes=8300-8400"})
    assert st == 500
    assert DATA[8300:8400] not in body
    # Intact blocks of the same container are still served.
    st, _, body = request(server, "/tampered.bin", {"Range": "bytes=0-99"})
    assert (st, body) == (206, DATA[:100])
    # A full GET starts fine and is cut before the damaged block: never a complete 200, and
    # whatever arrived is authenticated plaintext from before the damaged block.
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request("GET", "/tampered.bin")
    partial = b""
    try:
        resp = conn.getresponse()
        resp.read()
        pytest.fail("a response containing a damaged block completed")
    except http.client.IncompleteRead as e:
        partial = e.partial
    except http.client.RemoteDisconnected:
        pass  # cut before the headers were flushed
    finally:
        conn.close()
    assert len(partial) <= 8192
    assert partial == DATA[: len(partial)]


def test_two_hundred_parallel_requests(server) -> None:
    def one(i: int) -> bool:
        a = (i * 7919) % (N - 70000)
        st, _, body = request(server, "/media/data.bin", {"Range": f"bytes={a}-{a + 65535}"})
        return st == 206 and body == DATA[a : a + 65536]

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results)


def test_slow_client_is_timed_out_without_blocking_others(root) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, header_timeout=1.0) as server:
        slow = socket.create_connection(server.address, timeout=10)
        request_bytes = b"GET /media/data.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        started = time.monotonic()
        closed = False
        for byte in request_bytes:
            # Others are served while the slow client dribbles.
            assert request(server, "/media/data.bin", {"Range": "bytes=0-9"})[2] == DATA[:10]
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            if time.monotonic() - started > 5:
                break
        try:
            reply = slow.recv(100)
        except OSError:
            reply = b""
        slow.close()
        assert closed or not reply.startswith(b"HTTP/1.1 200"), reply


def test_token_required(root) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, token="s3cret-token") as server:
        st, h, _ = request(server, "/media/data.bin")
        assert st == 401
        assert h["www-authenticate"].startswith("Bearer")
        assert request(server, "/media/data.bin", {"Authorization": "Bearer wrong"})[0] == 401
        st, _, body = request(server, "/media/data.bin", {"Authorization": "Bearer s3cret-token", "Range": "bytes=0-4"})
        assert (st, body) == (206, DATA[:5])


def test_tls(root, tmp_path) -> None:
    cert_pem, key_pem = self_signed_cert(tmp_path)
    with qeltrix_v6.SeekServer(root, key=KEY, tls_cert=cert_pem, tls_key=key_pem) as server:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert_pem))
        conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
        conn.request("GET", "/media/data.bin", headers={"Range": "bytes=10-19"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, DATA[10:20])
        conn.close()
        # Plain HTTP to a TLS port gets no plaintext.
        assert DATA[:100] not in raw_request(server, b"GET /media/data.bin HTTP/1.1\r\nHost: x\r\n\r\n")


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ffmpeg = require("ffmpeg")
    r = tmp_path_factory.mktemp("media")
    src = r / "clip.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=6:size=320x240:rate=25",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25", "-movflags", "+faststart", str(src)],
        check=True, timeout=120,
    )  # fmt: skip
    webm = r / "clip.webm"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=6:size=320x240:rate=25",
         "-c:v", "libvpx", "-b:v", "500k", "-g", "25", str(webm)],
        check=True, timeout=120,
    )  # fmt: skip
    for f in (src, webm):
        qeltrix_v6.pack(f, r / (f.name + ".qltx"), key=KEY, block_size=16384)
        f.unlink()
    return r


def test_ffprobe_and_ffmpeg_seek_through_the_server(media_root) -> None:
    ffprobe, ffmpeg = require("ffprobe"), require("ffmpeg")
    with qeltrix_v6.SeekServer(media_root, key=KEY) as server:
        url = f"{server.url}/clip.mp4"
        out = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "format=duration:stream=codec_name", "-of", "csv=p=0", url],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "h264" in out.stdout
        duration = float(next(line for line in out.stdout.split() if "." in line))
        assert 5.9 <= duration <= 6.1
        # Seek into the middle and decode one frame there.
        res = subprocess.run(
            [ffmpeg, "-v", "error", "-ss", "3.5", "-i", url, "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        assert res.stdout.startswith(b"\x89PNG")


def test_headless_chromium_plays_and_seeks(media_root, tmp_path) -> None:
    require("chromium")
    driver_path = require("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with qeltrix_v6.SeekServer(media_root, key=KEY) as server:
        page = tmp_path / "page.html"
        page.write_text(
            "<!doctype html><video id=v muted preload=auto></video><script>"
            "const v = document.getElementById('v');"
            f"v.src = v.canPlayType('video/mp4; codecs=\"avc1.42E01E\"') ? '{server.url}/clip.mp4' "
            f": '{server.url}/clip.webm';"
            "</script>"
        )
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"):
            opts.add_argument(arg)
        opts.binary_location = shutil.which("chromium") or "chromium"
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        try:
            driver.set_script_timeout(60)
            driver.get(page.as_uri())
            result = driver.execute_async_script(
                """
                const done = arguments[arguments.length - 1];
                const v = document.getElementById('v');
                const fail = (why) => done({ok: false, why, err: v.error && v.error.code, src: v.currentSrc});
                v.addEventListener('error', () => fail('media error'));
                const go = () => {
                  v.addEventListener('seeked', () => {
                    v.play().then(() => {
                      const t0 = v.currentTime;
                      setTimeout(() => done({ok: !v.error, t0, t1: v.currentTime, src: v.currentSrc}), 1500);
                    }, (e) => fail('play: ' + e));
                  }, {once: true});
                  v.currentTime = 4.0;
                };
                if (v.readyState >= 1) go(); else v.addEventListener('loadedmetadata', go, {once: true});
                setTimeout(() => fail('timeout'), 50000);
                """
            )
        finally:
            driver.quit()
    assert result["ok"], result
    assert result["t0"] >= 3.9, result
    assert result["t1"] > result["t0"], result  # playback advanced after the seek
