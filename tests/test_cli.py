"""The ``qeltrix`` command line, through typer's CliRunner and as real processes.

Every command runs at least once as ``python -m qeltrix_v6`` in a subprocess. Subprocesses run
in a new session (no controlling terminal) unless a test gives them a pseudo-terminal on
purpose, so a missing key source can never hang on a prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_error
from qeltrix_v6 import cli
from qeltrix_v6._recipients import RecipientChange, RecipientError, plan_stanzas
from qeltrix_v6.cli import ExitCode, app, parse_size
from typer.testing import CliRunner

try:
    import pexpect
except ImportError:  # pragma: no cover - the pty fallback below is used instead
    pexpect = None

ROOT = Path(__file__).resolve().parents[1]
FAST_KDF = ["--kdf", "pbkdf2", "--kdf-iterations", "1000"]
ENV_VARS = ("QELTRIX_PASSPHRASE", "QELTRIX_NEW_PASSPHRASE", "QELTRIX_DEBUG")
runner = CliRunner()


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # In-process runs must never reach a real terminal, whatever pytest was started from.
    monkeypatch.setattr(cli._credentials, "_can_prompt", lambda: False)


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(3 * 1024 * 1024 + 12345)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    p = tmp_path / "my.key"
    p.write_bytes(os.urandom(32))
    return p


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    p = tmp_path / "pw.txt"
    p.write_text("correct horse battery staple\n")
    return p


@pytest.fixture
def src(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(data)
    return p


def invoke(*args: object, input: bytes | None = None, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(extra)
    return env


def run(*args: object, input: bytes | None = None, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *map(str, args)],
        input=input,
        capture_output=True,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        start_new_session=True,
        timeout=60,
    )


def pack_key(src: Path, dst: Path, key: Path, *extra: object) -> None:
    r = invoke("pack", "--key-file", key, *extra, src, dst)
    assert r.exit_code == 0, r.output


def info_json(container: Path, *extra: object) -> dict:
    r = invoke("info", "--json", *extra, container)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "qeltrix-tmp" in p.name)


# --- sizes and help -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("64KiB", 65536),
        ("64k", 65536),
        ("1MiB", 1 << 20),
        ("1M", 1 << 20),
        ("200MiB", 200 << 20),
        ("1.5GiB", 3 << 29),
        ("10MB", 10_000_000),
        ("1kb", 1000),
        ("0", 0),
        ("1_000", 1000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-5", "1.5", "3X", "1.0000001KiB"])
def test_parse_size_rejects(text: str) -> None:
    import typer

    with pytest.raises(typer.BadParameter):
        parse_size(text)


COMMANDS = ["pack", "unpack", "cat", "info", "verify", "keygen", "passwd", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    r = invoke(command, "--help")
    assert r.exit_code == 0, r.output
    assert "Example" in r.stdout
    assert f"qeltrix {command}" in r.stdout


def _command_paths() -> list[list[str]]:
    import typer.main

    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_shows_conventional_metavars() -> None:
    """Flags show no metavar and numbers a word (``--quiet``, ``--idle-timeout SECONDS``),
    never typer's ``<bool>`` or ``<float range>``, in every command's help."""
    paths = _command_paths()
    assert ["serve"] in paths and ["recipients", "add"] in paths
    for path in paths:
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (path, r.output)
        assert not re.search(r"<(bool|int|float|integer)", r.stdout), (path, r.stdout)
        if path == ["gateway"]:
            assert re.search(r"--idle-timeout\s+SECONDS", r.stdout)
            assert re.search(r"--quiet\s+-q\s+No progress", r.stdout)


def test_root_help_documents_exit_codes_and_commands() -> None:
    r = invoke("--help")
    assert r.exit_code == 0
    for command in COMMANDS:
        assert command in r.stdout
    for code in ExitCode:
        assert re.search(rf"^\s*{int(code)}\s+\S", r.stdout, re.M), f"exit code {int(code)} not in --help"


def test_exit_codes_in_readme_match() -> None:
    """The README's exit-code table is the code's, row for row (no code missing, none extra,
    the same words)."""
    section = _readme_cli_section()
    rows = dict(re.findall(r"^\| (\d+)\s+\| (.+?) \|$", section, re.M))
    assert {int(c) for c in rows} == {int(c) for c in cli.EXIT_CODE_HELP}
    for code, text in cli.EXIT_CODE_HELP.items():
        assert rows[str(int(code))].replace("`", "") == text, code


def test_usage_error_is_one_line() -> None:
    r = invoke("pack", "a", "b", "--no-such-option")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "--no-such-option")
    r = invoke("pack", "a", "b", "--block-size", "lots")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "--block-size")


def test_block_size_out_of_range(src: Path, key: Path, tmp_path: Path) -> None:
    r = invoke("pack", "--key-file", key, "--block-size", "128MiB", src, tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "--block-size")
    assert not (tmp_path / "x.qltx").exists()


def test_version() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("qeltrix ")


# --- pack / unpack --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--cipher", "chacha20-poly1305", "--block-size", "64KiB", "--workers", "1"],
        ["--no-permute", "--block-size", "1MiB", "--workers", "3"],
    ],
)
def test_pack_unpack_round_trip(src: Path, key: Path, tmp_path: Path, data: bytes, options: list[str]) -> None:
    box, out = tmp_path / "box.qltx", tmp_path / "out.bin"
    pack_key(src, box, key, *options)
    r = invoke("unpack", "--key-file", key, box, out)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert out.read_bytes() == data
    info = info_json(box, "--key-file", key)
    assert info["plaintext_len"] == len(data)
    if "--cipher" in options:
        assert info["cipher"] == "chacha20-poly1305" and info["block_size"] == 65536
    if "--no-permute" in options:
        assert info["permuted"] is False and info["index"]["in_plaintext_order"] is True


def test_pack_with_key_and_passphrase_opens_with_either(src: Path, key: Path, pw: Path, tmp_path: Path) -> None:
    box = tmp_path / "box.qltx"
    r = invoke("pack", "--key-file", key, "--passphrase-file", pw, *FAST_KDF, src, box)
    assert r.exit_code == 0, r.output
    kinds = [d["kind"] for d in info_json(box)["recipients"]]
    assert kinds == ["key", "pbkdf2"]
    assert invoke("verify", "--key-file", key, box).exit_code == 0
    assert invoke("verify", "--passphrase-file", pw, box).exit_code == 0


def test_passphrase_from_environment(src: Path, tmp_path: Path, data: bytes) -> None:
    box, out = tmp_path / "box.qltx", tmp_path / "out.bin"
    env = {"QELTRIX_PASSPHRASE": "hunter2 but longer"}
    assert invoke("pack", *FAST_KDF, src, box, env=env).exit_code == 0
    assert invoke("unpack", box, out, env=env).exit_code == 0
    assert out.read_bytes() == data


def test_stdin_stdout_in_process(key: Path, data: bytes) -> None:
    r = invoke("pack", "--key-file", key, "-", "-", input=data)
    assert r.exit_code == 0, r.stderr
    container = r.stdout_bytes
    assert container[:6] == b"QLTXV6" and r.stderr == ""
    r = invoke("unpack", "--key-file", key, "-", "-", input=container)
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == data


def test_pipeline_subprocess_compared_with_cmp(tmp_path: Path, key: Path) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    q = f"{sys.executable} -m qeltrix_v6"
    script = (
        f"cat plain.bin | {q} pack --key-file my.key --block-size 64KiB - - "
        f"| {q} unpack --key-file my.key - - > roundtrip.bin && cmp plain.bin roundtrip.bin"
    )
    r = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        start_new_session=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    assert subprocess.run(["cmp", str(plain), str(tmp_path / "roundtrip.bin")]).returncode == 0


def test_pack_and_unpack_subprocess(src: Path, key: Path, tmp_path: Path, data: bytes) -> None:
    box, out = tmp_path / "box.qltx", tmp_path / "out.bin"
    r = run("pack", "--key-file", key, src, box)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""  # silent when stderr is not a terminal
    r = run("unpack", "--key-file", key, box, out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


def test_overwrite_refused_without_force(src: Path, key: Path, tmp_path: Path, data: bytes) -> None:
    box, out = tmp_path / "box.qltx", tmp_path / "out.bin"
    pack_key(src, box, key)
    before = sha(box)
    r = invoke("pack", "--key-file", key, src, box)
    assert r.exit_code == ExitCode.IO
    assert_one_error(r.stderr, "already exists")
    assert "--force" in r.stderr
    assert sha(box) == before
    out.write_bytes(b"precious")
    r = run("unpack", "--key-file", key, box, out)
    assert r.returncode == ExitCode.IO
    assert_one_error(r.stderr, "already exists")
    assert out.read_bytes() == b"precious"
    assert invoke("pack", "--force", "--key-file", key, src, box).exit_code == 0
    assert sha(box) != before
    assert invoke("unpack", "--force", "--key-file", key, box, out).exit_code == 0
    assert out.read_bytes() == data
    assert leftovers(tmp_path) == []
    # Devices are not files to protect: unpacking to /dev/null needs no --force.
    assert invoke("unpack", "--key-file", key, box, os.devnull).exit_code == 0


def test_missing_input_and_directory(key: Path, tmp_path: Path) -> None:
    r = invoke("pack", "--key-file", key, tmp_path / "nope", tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.IO
    assert_one_error(r.stderr, "no such file")
    # A directory packs into an archive (README "Archives"), never including the archive itself.
    r = invoke("pack", "-q", "--key-file", key, tmp_path, tmp_path / "x.qltx")
    assert r.exit_code == 0, r.stderr
    r = invoke("ls", "--key-file", key, tmp_path / "x.qltx")
    assert r.exit_code == 0 and "x.qltx" not in r.stdout and f"{tmp_path.name}/my.key" in r.stdout


def test_not_a_container(src: Path, key: Path, tmp_path: Path) -> None:
    r = invoke("unpack", "--key-file", key, src, tmp_path / "out")
    assert r.exit_code == ExitCode.NOT_A_CONTAINER
    assert_one_error(r.stderr, "not a Qeltrix V6 container")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    r = invoke("info", empty)
    assert r.exit_code == ExitCode.NOT_A_CONTAINER
    assert_one_error(r.stderr, "empty")


# --- keys -----------------------------------------------------------------------------------


def test_wrong_passphrase(src: Path, pw: Path, tmp_path: Path) -> None:
    box, out = tmp_path / "box.qltx", tmp_path / "out.bin"
    assert invoke("pack", "--passphrase-file", pw, *FAST_KDF, src, box).exit_code == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("not the passphrase\n")
    r = invoke("unpack", "--passphrase-file", bad, box, out)
    assert r.exit_code == ExitCode.WRONG_KEY
    assert_one_error(r.stderr, "wrong passphrase")
    assert not out.exists() and leftovers(tmp_path) == []
    r = run("unpack", box, out, env=clean_env(QELTRIX_PASSPHRASE="nope"))
    assert r.returncode == ExitCode.WRONG_KEY
    assert_one_error(r.stderr, "wrong passphrase")
    assert not out.exists()


def test_wrong_key_file(src: Path, key: Path, tmp_path: Path) -> None:
    box = tmp_path / "box.qltx"
    pack_key(src, box, key)
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    r = invoke("cat", "--key-file", other, box, "--length", "10")
    assert r.exit_code == ExitCode.WRONG_KEY
    assert_one_error(r.stderr, "wrong key")
    assert r.stdout_bytes == b""


def test_no_key_source_and_no_terminal(src: Path, key: Path, tmp_path: Path) -> None:
    r = invoke("pack", src, tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.USAGE
    line = assert_one_error(r.stderr, "no key given")
    assert "QELTRIX_PASSPHRASE" in r.stderr and "--key-file" in r.stderr, line
    r = run("pack", src, tmp_path / "x.qltx")
    assert r.returncode == ExitCode.USAGE
    assert_one_error(r.stderr, "no key given")
    assert not (tmp_path / "x.qltx").exists()
    # A container that only a key file opens: say so instead of asking for a passphrase.
    box = tmp_path / "box.qltx"
    pack_key(src, box, key)
    r = invoke("unpack", box, tmp_path / "out")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "opens only with a key file")


def test_passphrase_never_accepted_as_option_value(src: Path, tmp_path: Path) -> None:
    r = invoke("pack", "--passphrase", "s3cret", src, tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "never accepted on the command line")
    assert "s3cret" not in r.stderr
    assert not (tmp_path / "x.qltx").exists()


def test_bad_key_file_and_passphrase_file(src: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    r = invoke("pack", "--key-file", short, src, tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "exactly 32 raw bytes")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    r = invoke("pack", "--passphrase-file", empty, src, tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "empty")
    r = invoke("pack", "--key-file", tmp_path / "missing.key", src, tmp_path / "x.qltx")
    assert r.exit_code == ExitCode.IO
    assert_one_error(r.stderr, "no such file")


def test_keygen_mode_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    old_umask = os.umask(0)
    try:
        r = invoke("keygen", "-o", path)
    finally:
        os.umask(old_umask)
    assert r.exit_code == 0, r.output
    assert (path.stat().st_mode & 0o777) == 0o600
    key = path.read_bytes()
    assert len(key) == 32
    r = invoke("keygen", "--output", path)
    assert r.exit_code == ExitCode.IO
    assert_one_error(r.stderr, "already exists")
    assert path.read_bytes() == key
    # As a process, and two keys differ.
    second = tmp_path / "second.key"
    r = run("keygen", "-o", second)
    assert r.returncode == 0, r.stderr
    assert (second.stat().st_mode & 0o777) == 0o600
    assert len(second.read_bytes()) == 32 and second.read_bytes() != key
    r = run("keygen", "-o", second)
    assert r.returncode == ExitCode.IO
    assert_one_error(r.stderr, "refusing to overwrite")
    assert leftovers(tmp_path) == []


def test_keygen_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "fs.key"
    assert invoke("keygen", "-o", path).exit_code == 0
    assert (path.stat().st_mode & 0o777) == 0o600 and len(path.read_bytes()) == 32
    assert leftovers(tmp_path) == []


# --- cat ------------------------------------------------------------------------------------


@pytest.fixture
def small_box(tmp_path: Path, src: Path, key: Path) -> Path:
    box = tmp_path / "small.qltx"
    pack_key(src, box, key, "--block-size", "64KiB")
    return box


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        ("0", "100"),  # start
        ("65530", "20"),  # across a block boundary
        ("1MiB", "200KiB"),  # middle, several blocks
        ("1.5MiB", "1"),
        (None, None),  # the whole plaintext
    ],
)
def test_cat_ranges(small_box: Path, key: Path, data: bytes, offset: str | None, length: str | None) -> None:
    args = ["cat", "--key-file", key, small_box]
    if offset is not None:
        args += ["--offset", offset, "--length", length]
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    a = parse_size(offset) if offset else 0
    n = parse_size(length) if length else len(data)
    assert r.stdout_bytes == data[a : a + n]


def test_cat_end_and_past_the_end(small_box: Path, key: Path, data: bytes) -> None:
    total = len(data)
    r = invoke("cat", "--key-file", key, small_box, "--offset", total - 10)
    assert r.exit_code == 0 and r.stdout_bytes == data[-10:]
    r = invoke("cat", "--key-file", key, small_box, "--offset", total - 10, "--length", "1MiB")
    assert r.exit_code == 0 and r.stdout_bytes == data[-10:]  # clipped like a file read
    r = invoke("cat", "--key-file", key, small_box, "--offset", total, "--length", 5)
    assert r.exit_code == 0 and r.stdout_bytes == b""
    r = invoke("cat", "--key-file", key, small_box, "--offset", "1GiB", "--length", 5)
    assert r.exit_code == 0 and r.stdout_bytes == b""
    r = invoke("cat", "--key-file", key, small_box, "--offset", 5, "--length", 0)
    assert r.exit_code == 0 and r.stdout_bytes == b""


def test_cat_reads_only_the_blocks_it_needs(small_box: Path, key: Path, data: bytes) -> None:
    blocks = info_json(small_box, "--key-file", key, "--blocks")["blocks"]
    victim = blocks[10]
    flip_byte(small_box, victim["frame_offset"] + 200)
    # A range in another block still reads: the damaged block is never touched.
    r = invoke("cat", "--key-file", key, small_box, "--offset", 0, "--length", 1000)
    assert r.exit_code == 0 and r.stdout_bytes == data[:1000]
    r = invoke("cat", "--key-file", key, small_box, "--offset", victim["pt_offset"] + 5, "--length", 10)
    assert r.exit_code == ExitCode.CORRUPT
    assert_one_error(r.stderr, "block 10")


def test_cat_subprocess_human_sizes(small_box: Path, key: Path, data: bytes) -> None:
    r = run("cat", "--key-file", key, small_box, "--offset", "2MiB", "--length", "64KiB")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data[2 << 20 : (2 << 20) + (64 << 10)]
    assert r.stderr == b""


def test_broken_pipe_is_quiet(small_box: Path, key: Path) -> None:
    q = f"{sys.executable} -m qeltrix_v6"
    r = subprocess.run(
        ["bash", "-c", f"{q} cat --key-file my.key small.qltx | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}"],
        cwd=small_box.parent,
        env=clean_env(),
        capture_output=True,
        start_new_session=True,
        timeout=60,
    )
    assert r.stdout.decode().strip() == str(int(ExitCode.BROKEN_PIPE))
    assert r.stderr == b""


# --- info -----------------------------------------------------------------------------------


def test_info_without_a_key(small_box: Path) -> None:
    r = invoke("info", small_box)
    assert r.exit_code == 0, r.output
    for fragment in ("version 1", "aes-256-gcm", "64 KiB", "key file", "permuted"):
        assert fragment in r.stdout
    info = info_json(small_box)
    assert info["unlocked"] is False
    assert info["format_version"] == 1 and info["block_size"] == 65536
    assert info["recipients"] == [{"kind": "key", "kind_id": 1}]
    assert info["file_len"] == small_box.stat().st_size
    assert "plaintext_len" not in info and "block_count" not in info


def test_info_with_a_key(small_box: Path, key: Path, data: bytes) -> None:
    r = invoke("info", "--key-file", key, small_box)
    assert r.exit_code == 0, r.output
    assert f"{len(data):,} bytes" in r.stdout
    info = info_json(small_box, "--key-file", key, "--blocks")
    n = -(-len(data) // 65536)
    assert info["unlocked"] is True
    assert info["plaintext_len"] == len(data) and info["block_count"] == n and info["complete"] is True
    assert info["index"]["max_block_len"] == 65536 and info["index"]["short_blocks"] == 1
    assert [b["pt_offset"] for b in info["blocks"]] == [i * 65536 for i in range(n)]


def test_info_passphrase_kdf_parameters_subprocess(src: Path, pw: Path, tmp_path: Path) -> None:
    box = tmp_path / "box.qltx"
    r = run("pack", "--passphrase-file", pw, *FAST_KDF, src, box)
    assert r.returncode == 0, r.stderr
    r = run("info", "--json", box)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["recipients"] == [{"kind": "pbkdf2", "kind_id": 3, "iterations": 1000}]
    r = run("info", "--json", "--passphrase-file", pw, box)
    assert json.loads(r.stdout)["plaintext_len"] == src.stat().st_size
    r = run("info", "--blocks", box)
    assert r.returncode == ExitCode.USAGE
    assert_one_error(r.stderr, "--blocks needs a key")


# --- verify and tampering -------------------------------------------------------------------


def test_verify_ok(small_box: Path, key: Path, data: bytes) -> None:
    r = invoke("verify", "--key-file", key, small_box)
    assert r.exit_code == 0, r.output
    assert "OK" in r.stdout
    r = run("verify", "--json", "--key-file", key, small_box)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["plaintext_len"] == len(data)


def test_tampered_block_through_verify_and_unpack(small_box: Path, key: Path, tmp_path: Path) -> None:
    blocks = info_json(small_box, "--key-file", key, "--blocks")["blocks"]
    # Damage two blocks; the first in plaintext order must be named even if the parallel
    # scan trips over the other one first.
    for i in (7, 30):
        flip_byte(small_box, blocks[i]["frame_offset"] + 150)
    r = invoke("verify", "--key-file", key, small_box)
    assert r.exit_code == ExitCode.CORRUPT
    b = blocks[7]
    assert_one_error(r.stderr, "block 7", f"plaintext bytes {b['pt_offset']}-{b['pt_offset'] + b['pt_len'] - 1}")
    r = run("verify", "--json", "--key-file", key, small_box)
    assert r.returncode == ExitCode.CORRUPT
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["error"] == "corrupt"
    first = report["first_bad_block"]
    assert first["block"] == 7
    assert (first["pt_offset"], first["pt_end"]) == (b["pt_offset"], b["pt_offset"] + b["pt_len"])
    assert [x["block"] for x in report["bad_blocks"]] == [7, 30] and report["bad_block_count"] == 2
    assert_one_error(r.stderr, "block 7")

    out = tmp_path / "out.bin"
    r = invoke("unpack", "--key-file", key, small_box, out)
    assert r.exit_code == ExitCode.CORRUPT
    assert_one_error(r.stderr, "corrupt or tampered")
    assert not out.exists() and leftovers(tmp_path) == []
    r = run("unpack", "--key-file", key, small_box, out)
    assert r.returncode == ExitCode.CORRUPT
    assert_one_error(r.stderr, "corrupt or tampered")
    assert not out.exists() and leftovers(tmp_path) == []


def test_tampered_header_and_index(small_box: Path, key: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "header.qltx"
    shutil.copy(small_box, damaged)
    flip_byte(damaged, 30)  # container_id: covered by the header checksum
    r = invoke("verify", "--key-file", key, "--json", damaged)
    assert r.exit_code == ExitCode.CORRUPT
    assert json.loads(r.stdout)["first_bad_block"] is None
    r = invoke("info", damaged)
    assert r.exit_code == ExitCode.CORRUPT
    assert_one_error(r.stderr, "corrupt")
    damaged = tmp_path / "footer.qltx"
    shutil.copy(small_box, damaged)
    flip_byte(damaged, damaged.stat().st_size - 24 - 30)  # inside the encrypted index
    r = invoke("unpack", "--key-file", key, damaged, tmp_path / "out")
    assert r.exit_code == ExitCode.CORRUPT
    assert_one_error(r.stderr, "index")


def test_truncated(small_box: Path, key: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.qltx"
    cut.write_bytes(small_box.read_bytes()[:-100])
    r = invoke("verify", "--key-file", key, "--json", cut)
    assert r.exit_code == ExitCode.TRUNCATED
    assert json.loads(r.stdout)["error"] == "truncated"
    r = invoke("unpack", "--key-file", key, cut, tmp_path / "out")
    assert r.exit_code == ExitCode.TRUNCATED
    assert_one_error(r.stderr, "truncated")


def test_debug_shows_the_traceback(small_box: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    r = run("unpack", "--debug", "--key-file", other, small_box, tmp_path / "out")
    assert r.returncode == ExitCode.WRONG_KEY
    assert b"Traceback" in r.stderr and b"qeltrix: error: wrong key" in r.stderr


# --- passwd ---------------------------------------------------------------------------------


@pytest.fixture
def pw_box(tmp_path: Path, src: Path, pw: Path) -> Path:
    box = tmp_path / "pw.qltx"
    r = invoke("pack", "--passphrase-file", pw, *FAST_KDF, "--block-size", "64KiB", src, box)
    assert r.exit_code == 0, r.output
    return box


def _body(path: Path) -> bytes:
    blob = path.read_bytes()
    return blob[info_json(path)["header_len"] :]


def test_passwd_changes_the_passphrase(pw_box: Path, pw: Path, tmp_path: Path, data: bytes) -> None:
    new = tmp_path / "new.txt"
    new.write_text("a brand new passphrase\n")
    size, body = pw_box.stat().st_size, _body(pw_box)
    r = invoke("passwd", "--passphrase-file", pw, "--new-passphrase-file", new, *FAST_KDF, pw_box)
    assert r.exit_code == 0, r.output
    assert pw_box.stat().st_size == size and _body(pw_box) == body  # only the header changed
    out = tmp_path / "out.bin"
    r = invoke("unpack", "--passphrase-file", pw, pw_box, out)
    assert r.exit_code == ExitCode.WRONG_KEY
    assert_one_error(r.stderr, "wrong passphrase")
    assert not out.exists()
    assert invoke("unpack", "--passphrase-file", new, pw_box, out).exit_code == 0
    assert out.read_bytes() == data


def test_passwd_subprocess_with_environment(pw_box: Path, pw: Path, tmp_path: Path, data: bytes) -> None:
    env = clean_env(QELTRIX_PASSPHRASE=pw.read_text().strip(), QELTRIX_NEW_PASSPHRASE="from the environment")
    r = run("passwd", "--kdf", "pbkdf2", "--kdf-iterations", "1000", pw_box, env=env)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.bin"
    r = run("unpack", pw_box, out, env=clean_env(QELTRIX_PASSPHRASE="from the environment"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    r = run("unpack", pw_box, tmp_path / "out2", env=clean_env(QELTRIX_PASSPHRASE=pw.read_text().strip()))
    assert r.returncode == ExitCode.WRONG_KEY
    assert_one_error(r.stderr, "wrong passphrase")
    r = run("passwd", pw_box, env=clean_env(QELTRIX_PASSPHRASE="from the environment"))
    assert r.returncode == ExitCode.USAGE
    assert_one_error(r.stderr, "no new passphrase")


def test_passwd_add_and_remove_key_files(pw_box: Path, pw: Path, key: Path, tmp_path: Path, data: bytes) -> None:
    r = invoke("passwd", "--passphrase-file", pw, "--add-key-file", key, pw_box)
    assert r.exit_code == 0, r.output
    assert [d["kind"] for d in info_json(pw_box)["recipients"]] == ["pbkdf2", "key"]
    out = tmp_path / "out.bin"
    assert invoke("unpack", "--key-file", key, pw_box, out).exit_code == 0
    assert out.read_bytes() == data

    r = invoke("passwd", "--key-file", key, "--add-key-file", key, pw_box)
    assert r.exit_code == ExitCode.ERROR
    assert_one_error(r.stderr, "already a recipient")

    r = invoke("passwd", "--key-file", key, "--remove-passphrase", pw_box)
    assert r.exit_code == 0, r.output
    assert [d["kind"] for d in info_json(pw_box)["recipients"]] == ["key"]
    r = invoke("verify", "--passphrase-file", pw, pw_box)
    assert r.exit_code == ExitCode.WRONG_KEY

    before = sha(pw_box)
    r = invoke("passwd", "--key-file", key, "--remove-key-file", key, pw_box)
    assert r.exit_code == ExitCode.ERROR
    assert_one_error(r.stderr, "no passphrase or key")
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    r = invoke("passwd", "--key-file", key, "--remove-key-file", other, pw_box)
    assert r.exit_code == ExitCode.ERROR
    assert_one_error(r.stderr, "not a recipient")
    assert sha(pw_box) == before

    # Swap keys in one go, and set a passphrase again with the key.
    r = invoke("passwd", "--key-file", key, "--add-key-file", other, "--remove-key-file", key, pw_box)
    assert r.exit_code == 0, r.output
    assert invoke("verify", "--key-file", key, pw_box).exit_code == ExitCode.WRONG_KEY
    assert invoke("verify", "--key-file", other, pw_box).exit_code == 0
    r = invoke("passwd", "--key-file", other, "--new-passphrase-file", pw, *FAST_KDF, pw_box)
    assert r.exit_code == 0, r.output
    assert invoke("verify", "--passphrase-file", pw, pw_box).exit_code == 0


def test_passwd_refuses_when_the_header_is_full(tmp_path: Path, pw_box: Path, pw: Path) -> None:
    # 4096-byte header: 108 fixed bytes + an 83-byte pbkdf2 stanza + 62 key stanzas of 63 bytes
    # is 4097 bytes, one too many; 61 keys fit.
    keys: list[object] = []
    for i in range(62):
        p = tmp_path / f"k{i}.key"
        p.write_bytes(os.urandom(32))
        keys += ["--add-key-file", p]
    before = sha(pw_box)
    r = invoke("passwd", "--passphrase-file", pw, *keys, pw_box)
    assert r.exit_code == ExitCode.ERROR
    assert_one_error(r.stderr, "4096", "header")
    assert sha(pw_box) == before
    r = invoke("passwd", "--passphrase-file", pw, *keys[:-2], pw_box)
    assert r.exit_code == 0, r.output
    assert len(info_json(pw_box)["recipients"]) == 62


def test_passwd_keeps_unknown_stanzas() -> None:
    mk, cid = os.urandom(32), os.urandom(16)
    from qeltrix_v6 import _crypto

    k1, k2 = os.urandom(32), os.urandom(32)
    stanzas = [(9, b"future recipient"), _crypto.key_stanza(k1, mk, cid)]
    out = plan_stanzas(stanzas, mk, cid, RecipientChange(add_keys=[k2], remove_keys=[k1]))
    assert out[0] == (9, b"future recipient")
    assert [k for k, _ in out] == [9, 1]
    assert _crypto.unwrap_stanza(1, out[1][1], cid, key=k2, passphrase=None) == mk
    with pytest.raises(RecipientError):
        plan_stanzas(stanzas, mk, cid, RecipientChange(remove_keys=[k1]))  # only an unknown kind left


# --- interrupts -----------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_interrupt_leaves_no_partial_file(tmp_path: Path, key: Path, sig: int, code: int) -> None:
    box = tmp_path / "box.qltx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qeltrix_v6", "pack", "--key-file", str(key), "-", str(box)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(os.urandom(2 << 20))
    proc.stdin.flush()
    deadline = time.monotonic() + 20
    while not leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftovers(tmp_path), "the temporary output never appeared"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert_one_error(err)
    assert not box.exists() and leftovers(tmp_path) == []


# --- the interactive prompt through a pseudo-terminal ---------------------------------------


class _PtyChild:
    """A child process on a pseudo-terminal: pexpect when available, else the pty module."""

    def __init__(self, backend: str, args: list[str], cwd: Path) -> None:
        self.backend = backend
        argv = [sys.executable, "-m", "qeltrix_v6", *args]
        if backend == "pexpect":
            self.child = pexpect.spawn(argv[0], argv[1:], cwd=str(cwd), env=clean_env(), timeout=30)
            return
        import pty

        self.buf = b""
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.chdir(cwd)
            os.execve(argv[0], argv, clean_env())
        self.pid, self.fd = pid, fd

    def expect(self, text: str) -> None:
        if self.backend == "pexpect":
            self.child.expect_exact(text)
            return
        deadline = time.monotonic() + 30
        while text.encode() not in self.buf:
            assert time.monotonic() < deadline, f"timed out waiting for {text!r}; got {self.buf!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"EOF waiting for {text!r}; got {self.buf!r}"
                self.buf += chunk
        self.buf = self.buf.split(text.encode(), 1)[1]

    def sendline(self, line: str) -> None:
        if self.backend == "pexpect":
            self.child.sendline(line)
        else:
            os.write(self.fd, line.encode() + b"\r")

    def finish(self) -> tuple[int, str]:
        """Wait for the exit; return (exit status, everything printed after the last expect)."""
        if self.backend == "pexpect":
            self.child.expect(pexpect.EOF)
            self.child.close()
            return self.child.exitstatus, self.child.before.decode(errors="replace")
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.buf += chunk
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status), self.buf.decode(errors="replace")


PTY_BACKEND = "pexpect" if pexpect is not None else "pty"


def test_interactive_passphrase_prompt(tmp_path: Path, src: Path, data: bytes) -> None:
    backend = PTY_BACKEND
    c = _PtyChild(backend, ["pack", *FAST_KDF, "data.bin", "box.qltx"], tmp_path)
    c.expect("New passphrase: ")
    c.sendline("typed at the prompt")
    c.expect("Confirm passphrase: ")
    c.sendline("typed at the prompt")
    status, _ = c.finish()
    assert status == 0

    c = _PtyChild(backend, ["unpack", "box.qltx", "out.bin"], tmp_path)
    c.expect("Passphrase for box.qltx: ")
    c.sendline("typed at the prompt")
    status, _ = c.finish()
    assert status == 0
    assert (tmp_path / "out.bin").read_bytes() == data

    c = _PtyChild(backend, ["unpack", "box.qltx", "out2.bin"], tmp_path)
    c.expect("Passphrase for box.qltx: ")
    c.sendline("not it")
    status, rest = c.finish()
    assert status == ExitCode.WRONG_KEY
    assert "typed at the prompt" not in rest and "not it" not in rest  # the prompt does not echo
    assert_one_error(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", rest).replace("\r", ""), "wrong passphrase")
    assert not (tmp_path / "out2.bin").exists()

    c = _PtyChild(backend, ["pack", *FAST_KDF, "data.bin", "other.qltx"], tmp_path)
    c.expect("New passphrase: ")
    c.sendline("one")
    c.expect("Confirm passphrase: ")
    c.sendline("two")
    status, rest = c.finish()
    assert status == ExitCode.USAGE
    assert "do not match" in rest
    assert not (tmp_path / "other.qltx").exists()


def test_prompt_logic_in_process(monkeypatch: pytest.MonkeyPatch, small_box: Path, pw_box: Path, pw: Path) -> None:
    answers: list[str] = []
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        if not answers:
            raise EOFError
        return answers.pop(0)

    monkeypatch.setattr(cli._credentials, "_can_prompt", lambda: True)
    monkeypatch.setattr(cli._credentials, "_ask", ask)
    # info asks only with --prompt; a key-only container is never asked about.
    assert invoke("info", pw_box).exit_code == 0 and asked == []
    answers[:] = [pw.read_text().strip()]
    r = invoke("info", "--prompt", "--json", pw_box)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["unlocked"] is True and asked == [f"Passphrase for {pw_box}: "]
    asked.clear()
    r = invoke("verify", small_box)
    assert r.exit_code == ExitCode.USAGE and asked == []
    # End of input at the prompt: one line, no traceback.
    r = invoke("verify", pw_box)
    assert r.exit_code == ExitCode.ERROR
    assert_one_error(r.stderr, "no input at the prompt")
    answers[:] = [""]
    r = invoke("verify", pw_box)
    assert r.exit_code == ExitCode.USAGE
    assert_one_error(r.stderr, "empty")


def test_shell_completion() -> None:
    env = clean_env(_QELTRIX_COMPLETE="complete_bash", COMP_WORDS="qeltrix pa", COMP_CWORD="1")
    r = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6"], env=env, capture_output=True, start_new_session=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"pack", b"passwd"]


def test_pty_fallback_prompt_and_terminal_refusal(tmp_path: Path, src: Path, pw: Path, key: Path) -> None:
    """The plain ``pty`` driver (used when pexpect is missing) works too."""
    r = invoke("pack", "--passphrase-file", pw, *FAST_KDF, src, tmp_path / "box.qltx")
    assert r.exit_code == 0, r.output
    c = _PtyChild("pty", ["verify", "box.qltx"], tmp_path)
    c.expect("Passphrase for box.qltx: ")
    c.sendline(pw.read_text().strip())
    status, rest = c.finish()
    assert status == 0 and "OK" in rest
    c = _PtyChild("pty", ["pack", "--key-file", str(key), "data.bin", "-"], tmp_path)
    status, rest = c.finish()
    assert status == ExitCode.USAGE
    assert "refusing to write a binary container to the terminal" in rest


# --- demo and the README ----------------------------------------------------------------------


def test_demo_subprocess() -> None:
    r = run("demo")
    assert r.returncode == 0, r.stderr
    assert b"matches the original" in r.stdout


def _readme_cli_section() -> str:
    text = (ROOT / "README.md").read_text()
    start, end = text.index("<!-- BEGIN CLI -->"), text.index("<!-- END CLI -->")
    return text[start:end]


def _console_script_dir() -> Path:
    for candidate in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        if (candidate / "qeltrix").exists():
            return candidate
    found = shutil.which("qeltrix")
    if found is None:
        pytest.skip("the qeltrix console script is not installed")
    return Path(found).parent


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", _readme_cli_section(), re.S)
    assert len(blocks) >= 5
    env = clean_env(PATH=f"{_console_script_dir()}{os.pathsep}{os.environ.get('PATH', '')}")
    for block in blocks:
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            start_new_session=True,
            timeout=60,
        )
        assert r.returncode == 0, f"README block failed:\n{block}\nstderr:\n{r.stderr.decode()}"
    assert (tmp_path / "restored.mp4").read_bytes() == (tmp_path / "video.mp4").read_bytes()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is False and report["first_bad_block"]["block"] >= 0
    # The cut stream: the two whole frames before the cut, and nothing claimed beyond them.
    assert (tmp_path / "first-part.bin").read_bytes() == (tmp_path / "video.mp4").read_bytes()[: 2 * 65536]
