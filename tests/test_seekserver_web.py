"""SeekServer for browsers and CDNs (issue 10): signed URLs, CORS, Cache-Control and directory
listings, over real sockets with http.client and curl, through the real `qeltrix` CLI, and in
headless Chromium (one browser for the whole module; pages come from a second HTTP server on
another port, i.e. another origin)."""

from __future__ import annotations

import base64
import functools
import hmac
import http.client
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import qeltrix_v6
from conftest import http_request, require, running_cli
from hypothesis import given
from hypothesis import strategies as st
from qeltrix_v6 import _signed_url

KEY = bytes(range(32))
URL_KEY = bytes(range(100, 132))
TOKEN = "s3cret-token"
DATA = os.urandom(100_000)
PW = "correct horse battery staple"

VECTOR = json.loads((Path(__file__).parent / "vectors" / "url" / "signed-url.json").read_text())


def request(url: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    u = urllib.parse.urlsplit(url)
    return http_request((u.hostname or "127.0.0.1", u.port or 80), path, headers, method)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("web") / "root"
    (r / "sub dir").mkdir(parents=True)
    qeltrix_v6.pack(io.BytesIO(DATA), r / "data.bin.qltx", key=KEY, block_size=4096)
    qeltrix_v6.pack(io.BytesIO(b"<b>hi</b>"), r / "sub dir" / "a <i>&'\".txt.qltx", key=KEY)
    (r / ".hidden.bin.qltx").write_bytes(b"x")
    (r / ".data.bin.qltx.Ab12.qeltrix-tmp").write_bytes(b"x")
    (r / "notes.txt").write_text("not a container")
    (r.parent / "outside.bin.qltx").write_bytes(b"secret")
    (r.parent / "outside-dir").mkdir()
    os.symlink(r.parent / "outside.bin.qltx", r / "escape.bin.qltx")
    os.symlink(r.parent / "outside-dir", r / "escape-dir")
    return r


# --- signed URLs ----------------------------------------------------------------------------


def test_signed_url_test_vector() -> None:
    """The vector in tests/vectors/url/signed-url.json, from the API and from the formula in the
    README recomputed here with the standard library's hmac."""
    v = VECTOR
    key = bytes.fromhex(v["url_key_hex"])
    got = qeltrix_v6.sign_url(v["path"], key=key, expires_at=v["expires"])
    assert got == v["signed"]
    message = b"qeltrix-v6 signed url\n" + str(v["expires"]).encode() + b"\n" + v["signed_path"].encode()
    sig = base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")).rstrip(b"=").decode()
    assert got.endswith(f"?qx-expires={v['expires']}&qx-sig={sig}")
    path, query = got.split("?")
    assert _signed_url.check(key, path, query, now=v["expires"]) == "valid"
    assert _signed_url.check(key, path, query, now=v["expires"] + 1) == "expired"


@given(
    path=st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
    expires=st.integers(0, _signed_url.MAX_EXPIRES),
    flip=st.integers(0, 42),
)
def test_any_path_round_trips_and_any_changed_signature_character_fails(path: str, expires: int, flip: int) -> None:
    literal = "/" + path.replace("%", "%25")  # the path as a URL names it
    url = qeltrix_v6.sign_url(literal, key=URL_KEY, expires_at=expires)
    signed_path, query = url.split("?")
    assert _signed_url.check(URL_KEY, signed_path, query, now=expires) == "valid"
    # Another spelling of the same path: every character percent-encoded.
    spelled = "".join(f"%{b:02X}" for b in ("/" + path).encode())
    assert _signed_url.check(URL_KEY, spelled, query, now=expires) == "valid"
    sig = query.split("qx-sig=")[1]
    other = "A" if sig[flip] != "A" else "B"
    tampered = query.replace(sig, sig[:flip] + other + sig[flip + 1 :])
    assert _signed_url.check(URL_KEY, signed_path, tampered, now=expires) == "invalid"
    assert _signed_url.check(URL_KEY, signed_path + "x", query, now=expires) == "invalid"


@pytest.fixture(scope="module")
def signed_server(root: Path) -> Iterator[qeltrix_v6.SeekServer]:
    with qeltrix_v6.SeekServer(root, key=KEY, url_key=URL_KEY) as s:
        yield s


def test_signature_is_path_scoped_and_tamper_evident(signed_server: qeltrix_v6.SeekServer) -> None:
    url = signed_server.url
    good = qeltrix_v6.sign_url("/data.bin", key=URL_KEY, expires=600)
    query = good.split("?")[1]
    params = dict(p.split("=") for p in query.split("&"))
    sig, exp = params["qx-sig"], params["qx-expires"]
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    cases = [
        (good, 200),
        (f"/data%2Ebin?{query}", 200),  # the same resource, spelled differently
        (f"/data.bin?x=1&{query}&format=json", 200),  # other parameters are ignored
        (f"/data.bin?qx-sig={sig}&qx-expires={exp}", 200),  # order does not matter
        ("/data.bin", 403),  # only signed URLs are served without a token
        (f"/data.bin?qx-expires={exp}", 403),
        (f"/sub%20dir/a%20%3Ci%3E%26'%22.txt?{query}", 403),  # another path
        (f"/data.bin?qx-expires={exp}&qx-sig={flipped}", 403),
        (f"/data.bin?qx-expires={int(exp) + 1}&qx-sig={sig}", 403),  # a longer life
        (f"/data.bin?qx-expires=0{exp}&qx-sig={sig}", 403),  # not canonical
        (f"/data.bin?qx-expires={exp}&qx-sig={sig}=", 403),
        (f"{good}&qx-sig={sig}", 403),  # twice
        (qeltrix_v6.sign_url("/data.bin", key=KEY, expires=600), 403),  # another key
    ]
    for target, want in cases:
        status, headers, body = request(url, target)
        assert status == want, (target, body)
        if want == 200:
            assert body == DATA
        else:
            assert DATA[:100] not in body
    status, _, body = request(url, qeltrix_v6.sign_url("/data.bin", key=URL_KEY, expires_at=int(time.time()) - 5))
    assert (status, body) == (403, b"this signed URL has expired\n")
    # HEAD and ranges under a signature.
    status, headers, _ = request(url, good, method="HEAD")
    assert (status, headers["content-length"]) == (200, str(len(DATA)))
    status, headers, body = request(url, good, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["content-range"]) == (206, DATA[10:20], f"bytes 10-19/{len(DATA)}")


def test_signed_urls_beside_a_bearer_token(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, token=TOKEN, url_key=URL_KEY) as s:
        signed = qeltrix_v6.sign_url("/data.bin", key=URL_KEY)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert request(s.url, "/data.bin", bearer)[0] == 200
        assert request(s.url, signed)[0] == 200
        assert request(s.url, signed, {"Authorization": "Bearer wrong"})[0] == 200
        status, headers, body = request(s.url, "/data.bin")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert body == b"a valid bearer token or signed URL is required\n"
        # A bad signature is refused even though a token could have been sent instead.
        assert request(s.url, signed.replace("/data.bin", "/escape.bin"))[0] == 403
        # The token still works with a stale signature beside it.
        stale = qeltrix_v6.sign_url("/data.bin", key=URL_KEY, expires_at=5)
        assert request(s.url, stale, bearer)[0] == 200


# --- CORS and Cache-Control -----------------------------------------------------------------


def test_cors_headers_and_preflight(root: Path) -> None:
    allowed, other = "https://app.example", "https://evil.example"
    with qeltrix_v6.SeekServer(root, key=KEY, token=TOKEN, cors_origins=[allowed]) as s:
        auth = {"Authorization": f"Bearer {TOKEN}", "Origin": allowed}
        # Preflight: no credentials needed, the origin echoed.
        pre = {"Origin": allowed, "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization,range"}  # fmt: skip
        status, h, body = request(s.url, "/data.bin", pre, method="OPTIONS")
        assert (status, body) == (204, b"")
        assert h["access-control-allow-origin"] == allowed and h["vary"] == "Origin"
        assert h["access-control-allow-methods"] == "GET, HEAD"
        assert {"range", "authorization", "if-range"} <= {
            x.strip().lower() for x in h["access-control-allow-headers"].split(",")
        }
        assert int(h["access-control-max-age"]) > 0
        status, h, _ = request(s.url, "/data.bin", {**pre, "Origin": other}, method="OPTIONS")
        assert status == 403 and "access-control-allow-origin" not in h
        # OPTIONS that is not a preflight: 405, as without CORS.
        status, h, _ = request(s.url, "/data.bin", {"Origin": allowed}, method="OPTIONS")
        assert status == 405 and h["allow"] == "GET, HEAD, OPTIONS"
        # Actual responses of every kind carry the headers for the allowed origin only.
        etag = request(s.url, "/data.bin", auth, method="HEAD")[1]["etag"]
        for extra, want in [
            ({"Range": "bytes=0-9"}, 206),
            ({"Range": f"bytes={len(DATA)}-"}, 416),
            ({"If-None-Match": etag}, 304),
            ({}, 200),
        ]:
            status, h, _ = request(s.url, "/data.bin", {**auth, **extra})
            assert status == want
            assert h["access-control-allow-origin"] == allowed
            assert h["access-control-expose-headers"] == "Content-Range, Accept-Ranges, Content-Length, ETag"
            assert "Origin" in h["vary"]
            status, h, _ = request(s.url, "/data.bin", {**auth, **extra, "Origin": other})
            assert status == want and "access-control-allow-origin" not in h
        status, h, _ = request(s.url, "/data.bin", {"Origin": allowed})
        assert status == 401 and h["access-control-allow-origin"] == allowed
    # `*` allows any origin; without --cors-origin there are no CORS headers and OPTIONS is 405.
    with qeltrix_v6.SeekServer(root, key=KEY, cors_origins=["*"]) as s:
        status, h, _ = request(s.url, "/data.bin", {"Origin": other, "Access-Control-Request-Method": "GET"}, "OPTIONS")
        assert (status, h["access-control-allow-origin"]) == (204, "*")
    with qeltrix_v6.SeekServer(root, key=KEY) as s:
        status, h, _ = request(
            s.url, "/data.bin", {"Origin": allowed, "Access-Control-Request-Method": "GET"}, "OPTIONS"
        )
        assert (status, h["allow"]) == (405, "GET, HEAD")
        status, h, _ = request(s.url, "/data.bin", {"Origin": allowed})
        assert status == 200 and not any(k.startswith("access-control-") for k in h) and "vary" not in h
        assert h["cache-control"] == "private, no-transform"
    with pytest.raises(ValueError, match="not an origin"):
        qeltrix_v6.SeekServer(root, key=KEY, cors_origins=["https://app.example/"])


def test_cache_control_with_curl(root: Path) -> None:
    curl = require("curl")
    with qeltrix_v6.SeekServer(root, key=KEY, cache_control="public, max-age=3600, immutable") as s:
        out = subprocess.run([curl, "-sS", "-D", "-", "-o", os.devnull, "-r", "0-9", s.url + "/data.bin"],
                             check=True, capture_output=True, text=True, timeout=30).stdout  # fmt: skip
        assert re.search(r"(?im)^cache-control: public, max-age=3600, immutable\r?$", out), out
        assert re.search(r"(?im)^HTTP/1.1 206", out)
    with pytest.raises(ValueError, match="Cache-Control"):
        qeltrix_v6.SeekServer(root, key=KEY, cache_control="a\nb")


# --- directory listings ---------------------------------------------------------------------


def test_listing_never_leaves_root_and_escapes_html(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, directory_listing=True) as s:
        status, h, body = request(s.url, "/")
        assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
        assert h["content-security-policy"] == "default-src 'none'"
        page = body.decode()
        links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', page)
        assert links == [("data.bin", "data.bin"), ("sub%20dir/", "sub dir/")], page
        for hidden in ("hidden", "qeltrix-tmp", "escape", "outside", "notes"):
            assert hidden not in page
        status, h, body = request(s.url, "/sub%20dir/")
        page = body.decode()
        assert '<a href="a%20%3Ci%3E%26%27%22.txt">a &lt;i&gt;&amp;&#39;&quot;.txt</a>' in page, page
        assert "<i>" not in page
        # Each link the listing gives is served.
        assert request(s.url, "/sub%20dir/a%20%3Ci%3E%26%27%22.txt")[2] == b"<b>hi</b>"
        # JSON, by query or by Accept.
        status, h, body = request(s.url, "/?format=json")
        assert (status, h["content-type"]) == (200, "application/json")
        listing = json.loads(body)
        assert listing["path"] == "/" and listing["truncated"] is False
        assert [(e["name"], e["type"]) for e in listing["entries"]] == [("data.bin", "container"),
                                                                        ("sub dir", "directory")]  # fmt: skip
        assert listing["entries"][0]["container_len"] == (root / "data.bin.qltx").stat().st_size
        assert json.loads(request(s.url, "/sub%20dir/", {"Accept": "application/json"})[2])["entries"][0]["name"] == (
            "a <i>&'\".txt"
        )
        for outside in ("/../", "/%2e%2e/", "/escape-dir/", "/.hidden/", "//", "/sub%20dir/../../", "/nope/",
                        "/escape-dir", "/nope"):  # fmt: skip
            status, _, body = request(s.url, outside)
            assert status == 404 and b"outside" not in body, outside
        # A directory without its trailing slash is redirected, as nginx does.
        status, h, _ = request(s.url, "/sub%20dir?format=json")
        assert (status, h["location"]) == (301, "/sub%20dir/?format=json")
    with qeltrix_v6.SeekServer(root, key=KEY) as s:
        assert request(s.url, "/")[0] == 404
        assert request(s.url, "/sub%20dir/")[0] == 404
        assert request(s.url, "/sub%20dir")[0] == 404


def test_listing_needs_the_same_authorisation(root: Path) -> None:
    with qeltrix_v6.SeekServer(root, key=KEY, token=TOKEN, url_key=URL_KEY, directory_listing=True) as s:
        assert request(s.url, "/")[0] == 401
        assert request(s.url, "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert request(s.url, qeltrix_v6.sign_url("/", key=URL_KEY))[0] == 200
        # A signature for one directory does not list another.
        assert request(s.url, qeltrix_v6.sign_url("/", key=URL_KEY).replace("/?", "/sub%20dir/?"))[0] == 403


# --- the CLI --------------------------------------------------------------------------------


def qeltrix(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QELTRIX_")}
    return subprocess.run([sys.executable, "-m", "qeltrix_v6", *args], capture_output=True, text=True, timeout=60,
                          env=env)  # fmt: skip


def test_sign_url_cli_and_its_errors(tmp_path: Path) -> None:
    from qeltrix_v6.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    url_key = tmp_path / "url.key"
    r = runner.invoke(app, ["keygen", "-o", str(url_key)])
    assert r.exit_code == 0 and url_key.stat().st_mode & 0o777 == 0o600
    before = int(time.time())
    r = qeltrix(
        "sign-url", "--url-key", str(url_key), "--expires", "2h", "--base", "https://m.example:8443", "/a b.mp4"
    )
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"https://m\.example:8443/a%20b\.mp4\?qx-expires=(\d+)&qx-sig=([\w-]{43})\n", r.stdout)
    assert m, r.stdout
    assert before + 7200 <= int(m.group(1)) <= int(time.time()) + 7200
    assert _signed_url.check(url_key.read_bytes(), "/a%20b.mp4", r.stdout.split("?")[1].strip()) == "valid"
    # A bad duration from the real entry point: one error line, a hint, no traceback.
    r = qeltrix("sign-url", "--url-key", str(url_key), "--expires", "10x", "/a")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "qeltrix: error: --expires: '10x' is not a duration between 1 second and 3650 days",
        "hint: use e.g. 30s, 10m, 2h or 7d",
    ]
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    for args, code, said in [
        (["sign-url", "--url-key", str(tmp_path / "missing.key"), "/a"], 6, "no such file"),
        (["sign-url", "--url-key", str(short), "/a"], 2, "holds 3 bytes"),
        (["sign-url", "--url-key", str(tmp_path), "/a"], 6, "is a directory"),
        (["sign-url", "--url-key", str(url_key), "--expires", "0s", "/a"], 2, "not a duration"),
        (["sign-url", "--url-key", str(url_key), "--expires", "-5m", "/a"], 2, "not a duration"),
        (["sign-url", "--url-key", str(url_key), "--expires", "3651d", "/a"], 2, "not a duration"),
        (["sign-url", "--url-key", str(url_key), "--base", "ftp:/x", "/a"], 2, "not a base URL"),
        (["sign-url", "--url-key", str(url_key), "/%ff"], 2, "not a URL path"),
        (["sign-url", "--url-key", str(url_key), "https://m.example/a.mp4"], 2, "the path only"),
        (["serve", str(tmp_path), "--key-file", str(key_file), "--cors-origin", "example.com"], 2, "not an origin"),
        (["serve", str(tmp_path), "--key-file", str(key_file), "--cache-control", "a\x01"], 2, "Cache-Control"),
        (["serve", str(tmp_path), "--key-file", str(key_file), "--url-key", str(key_file)], 2, "a key of its own"),
        (["serve", str(tmp_path), "--key-file", str(key_file), "--url-key", str(short)], 2, "--url-key: key file"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == code, (args, r.output)
        assert isinstance(r.exception, SystemExit), (args, r.exception)
        assert said in r.output, (args, r.output)


# --- headless Chromium ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    require("chromium")
    driver_path = require("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two page origins: http://127.0.0.1:P1 and http://127.0.0.1:P2 (each serves page.html)."""
    d = tmp_path_factory.mktemp("pages")
    (d / "page.html").write_text("<!doctype html><meta charset=utf-8><title>page</title><body></body>")
    servers = [
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(d))) for _ in range(2)
    ]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{srv.server_address[1]}" for srv in servers]
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clip.mp4 / clip.webm under KEY, and pw-1/pw-2 of each under the passphrase (default
    Argon2id, 4 lanes: the KDF whose concurrent runs used to hang)."""
    ffmpeg = require("ffmpeg")
    r = tmp_path_factory.mktemp("media")
    for ext, codec in (("mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]),
                       ("webm", ["-c:v", "libvpx", "-b:v", "200k"])):  # fmt: skip
        src = r / f"clip.{ext}"
        subprocess.run(
            [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=3:size=160x120:rate=25", "-g", "25",
             *codec, str(src)],
            check=True, timeout=120,
        )  # fmt: skip
        qeltrix_v6.pack(src, r / f"clip.{ext}.qltx", key=KEY, block_size=16384)
        for n in (1, 2):
            qeltrix_v6.pack(src, r / f"pw-{n}.{ext}.qltx", passphrase=PW, block_size=16384)
        src.unlink()
    return r


PLAY = """
const srcs = arguments[0], done = arguments[arguments.length - 1];
const one = (src) => new Promise((resolve) => {
  const v = document.createElement('video');
  v.muted = true; v.preload = 'auto';
  v.addEventListener('error', () => resolve({ok: false, src, code: v.error && v.error.code}), {once: true});
  const tick = () => {
    if (v.currentTime > 0.2) { v.removeEventListener('timeupdate', tick); resolve({ok: true, src}); }
  };
  v.addEventListener('timeupdate', tick);
  v.addEventListener('canplay', () => v.play().catch((e) => resolve({ok: false, src, why: String(e)})), {once: true});
  document.body.appendChild(v);
  v.src = src;
});
setTimeout(() => done([{ok: false, why: 'timeout'}]), 50000);
Promise.all(srcs.map(one)).then(done);
"""


def _video_ext(driver: object, pages: list[str]) -> str:
    driver.get(pages[0] + "/page.html")  # type: ignore[attr-defined]
    mp4 = driver.execute_script(  # type: ignore[attr-defined]
        "return document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')"
    )
    return "mp4" if mp4 else "webm"


def test_signed_url_plays_in_chromium_behind_a_token_and_an_expired_one_is_refused(
    chromium: object, pages: list[str], media_root: Path, tmp_path: Path
) -> None:
    ext = _video_ext(chromium, pages)
    key_file, url_key_file, token_file = tmp_path / "k.key", tmp_path / "url.key", tmp_path / "token"
    key_file.write_bytes(KEY)
    url_key_file.write_bytes(URL_KEY)
    token_file.write_text(TOKEN + "\n")
    args = ["serve", str(media_root), "--port", "0", "--key-file", str(key_file), "--token-file", str(token_file),
            "--url-key", str(url_key_file)]  # fmt: skip
    with running_cli(*args, ready=r"on (http://\S+)") as (_, m, _):
        base = m.group(1)
        good = qeltrix_v6.sign_url(f"/clip.{ext}", key=URL_KEY, expires=600, base=base)
        expired = qeltrix_v6.sign_url(f"/clip.{ext}", key=URL_KEY, expires_at=int(time.time()) - 1, base=base)
        assert request(base, f"/clip.{ext}")[0] == 401  # the token is required without a signature
        assert request(base, expired.removeprefix(base))[0] == 403
        result = chromium.execute_async_script(PLAY, [good])  # type: ignore[attr-defined]
        assert result == [{"ok": True, "src": good}], result
        result = chromium.execute_async_script(PLAY, [expired])  # type: ignore[attr-defined]
        assert result[0]["ok"] is False and result[0].get("code") == 4, result  # MEDIA_ERR_SRC_NOT_SUPPORTED


def test_two_videos_under_a_passphrase_play_at_once_in_chromium(
    chromium: object, pages: list[str], media_root: Path, tmp_path: Path
) -> None:
    """Issue 10 item 1: two `<video>` elements ask for two containers nobody opened yet, at
    once, from a server started with --passphrase-file (Argon2id with 4 lanes)."""
    ext = _video_ext(chromium, pages)
    pw_file = tmp_path / "pw"
    pw_file.write_text(PW + "\n")
    args = ["serve", str(media_root), "--port", "0", "--passphrase-file", str(pw_file)]
    with running_cli(*args, ready=r"on (http://\S+)") as (_, m, _):
        srcs = [f"{m.group(1)}/pw-{n}.{ext}" for n in (1, 2)]
        result = chromium.execute_async_script(PLAY, srcs)  # type: ignore[attr-defined]
        assert result == [{"ok": True, "src": s} for s in srcs], result


FETCH = """
const [url, token, done] = arguments;
fetch(url, {headers: {Range: 'bytes=10-19', Authorization: 'Bearer ' + token}})
  .then(async (r) => done({ok: true, status: r.status, range: r.headers.get('Content-Range'),
                           etag: r.headers.get('ETag'), body: Array.from(new Uint8Array(await r.arrayBuffer()))}))
  .catch((e) => done({ok: false, why: String(e)}));
"""


def test_cors_preflight_from_another_origin_in_chromium(
    chromium: object, pages: list[str], root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A page on another origin fetches a range with an Authorization header: the browser
    sends a preflight, then reads the bytes and Content-Range if its origin is allowed; a page
    on an origin that is not listed cannot."""
    allowed, not_allowed = pages
    caplog.set_level("INFO", logger="qeltrix_v6.server")
    with qeltrix_v6.SeekServer(root, key=KEY, token=TOKEN, cors_origins=[allowed], access_log=True) as s:
        url = s.url + "/data.bin"
        chromium.get(allowed + "/page.html")  # type: ignore[attr-defined]
        r = chromium.execute_async_script(FETCH, url, TOKEN)  # type: ignore[attr-defined]
        assert r["ok"] and r["status"] == 206, r
        assert bytes(r["body"]) == DATA[10:20]
        assert r["range"] == f"bytes 10-19/{len(DATA)}" and r["etag"], r
        assert re.search(r"OPTIONS /data\.bin\b.*\b204\b", caplog.text), caplog.text
        chromium.get(not_allowed + "/page.html")  # type: ignore[attr-defined]
        r = chromium.execute_async_script(FETCH, url, TOKEN)  # type: ignore[attr-defined]
        assert r == {"ok": False, "why": "TypeError: Failed to fetch"}, r
