"""What a short command costs before its work (issue 16): ``qeltrix cat`` from a fresh process
imports only what reading needs, builds only the command it runs, and coerces option values
without pydantic, while every answer (values, errors, help) stays typer's own.

These tests check the structure (which modules a run imports), never a duration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.core
from conftest import KEY, make_plaintext, pack_bytes
from qeltrix_v6.cli import _MODULE_OF, _app, _command_name, _load_commands, app
from typer.main import get_command

# Never needed to read a byte range with a key file: each is a server, a remote service, the
# progress bar, a KDF or a command group that ``cat`` does not use.
NOT_FOR_CAT = (
    "pydantic",
    "pydantic_core",
    "boto3",
    "botocore",
    "rich.progress",
    "logging",
    "qeltrix_v6.server",
    "qeltrix_v6.gateway",
    "qeltrix_v6._kms",
    "qeltrix_v6._signed_url",
    "qeltrix_v6.cli._servers",
    "qeltrix_v6.cli._keys",
    "qeltrix_v6.cli._inspect",
    "cryptography.hazmat.primitives.kdf.argon2",
    "cryptography.hazmat.primitives.kdf.pbkdf2",
    "fractions",
    "hmac",
    "qeltrix_v6._recipients",
    "configparser",
)

_RUN_MAIN = """
import gc, json, sys
out, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["qeltrix", *argv]
from qeltrix_v6.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
sys.stdout.flush()
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules), "gc_enabled": gc.isenabled(),
               "gc_frozen": gc.get_freeze_count()}, f)
"""


def _run_main(tmp_path: Path, *argv: str) -> tuple[dict[str, Any], bytes]:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_MAIN, str(report), *argv],
        capture_output=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.endswith("_COMPLETE")},
    )
    assert proc.stderr == b"", proc.stderr.decode()
    return json.loads(report.read_text()), proc.stdout


def test_cat_imports_only_what_reading_needs(tmp_path: Path) -> None:
    pt = make_plaintext(600_000, seed="startup")
    box = tmp_path / "c.qltx"
    box.write_bytes(pack_bytes(pt, block_size=65536))
    key = tmp_path / "k"
    key.write_bytes(KEY)
    report, out = _run_main(
        tmp_path, "cat", "--key-file", str(key), str(box), "--offset", "100000", "--length", "64KiB"
    )
    assert report["code"] == 0
    assert out == pt[100_000 : 100_000 + 65536]
    loaded = set(report["modules"])
    assert "qeltrix_v6.cli._containers" in loaded
    assert sorted(loaded & set(NOT_FOR_CAT)) == []
    # The start-up's objects were frozen out of the cyclic GC, which runs again for the command.
    assert report["gc_enabled"] is True
    assert report["gc_frozen"] > 10_000


def test_a_single_file_pack_leaves_the_archive_code_out(tmp_path: Path) -> None:
    src, key, box = tmp_path / "in.bin", tmp_path / "k", tmp_path / "c.qltx"
    src.write_bytes(make_plaintext(100_000, seed="startup-pack"))
    key.write_bytes(KEY)
    report, _ = _run_main(tmp_path, "pack", "-q", "--key-file", str(key), str(src), str(box))
    assert report["code"] == 0 and box.exists()
    loaded = set(report["modules"])
    assert "qeltrix_v6.cli._containers" in loaded
    assert not loaded & {"qeltrix_v6.cli._archive", "qeltrix_v6.archive"}


def test_importing_the_cli_leaves_the_gc_running() -> None:
    # An embedder importing the CLI (tests do) keeps a collecting GC; the library alone does not
    # touch it at all.
    code = "import gc, qeltrix_v6; f = gc.get_freeze_count(); import qeltrix_v6.cli; print(f, gc.isenabled())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.split() == ["0", "True"]


def test_import_qeltrix_v6_leaves_servers_and_cli_out() -> None:
    code = "import json, sys, qeltrix_v6; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(proc.stdout))
    heavy = {"typer", "pydantic", "logging", "hmac", "qeltrix_v6.cli", "qeltrix_v6.server", "qeltrix_v6.gateway"}
    assert sorted(loaded & heavy) == []


def test_lazy_names_still_resolve() -> None:
    import qeltrix_v6

    assert qeltrix_v6.SeekServer.__module__ == "qeltrix_v6.server"
    assert qeltrix_v6.GatewayServer.__module__ == "qeltrix_v6.gateway"
    assert qeltrix_v6.KmsError.__module__ == qeltrix_v6.KmsUnavailableError.__module__ == "qeltrix_v6._kms"
    assert callable(qeltrix_v6.sign_url)
    with pytest.raises(AttributeError):
        _ = qeltrix_v6.no_such_name  # type: ignore[attr-defined]


def test_every_command_is_mapped_to_the_module_that_defines_it() -> None:
    # main() imports one module for a known command name; a command missing from the map still
    # works (everything is loaded), but loses the fast start.
    _load_commands()
    registered = {_command_name(c): c.callback.__module__ for c in app.registered_commands}
    registered |= {
        str(g.name): g.typer_instance.registered_commands[0].callback.__module__ for g in app.registered_groups
    }
    assert set(registered) == set(_MODULE_OF)
    for name, module in registered.items():
        assert module == ".".join(filter(None, ["qeltrix_v6.cli", _MODULE_OF[name]])), name


@pytest.mark.parametrize("argv", [["cat", "--help"], ["recipients", "add", "--help"], ["--help"]])
def test_help_is_the_same_when_one_command_is_built(tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    lazy = subprocess.run(
        [sys.executable, "-m", "qeltrix_v6", *argv], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    full_code = f"from qeltrix_v6.cli import app; app({argv!r}, prog_name='qeltrix')"
    full = subprocess.run(
        [sys.executable, "-c", full_code], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert lazy.returncode == full.returncode == 0
    assert lazy.stdout == full.stdout
    assert "Usage: qeltrix" in lazy.stdout


SAMPLES = ["7", "-3", "0", "1.5", " 8", "1e3", "abc", "", "64KiB", "1.5GiB", "aes", "AES-256-GCM", "argon2id", "x,y"]


def _params() -> list[Any]:
    _load_commands()
    group = get_command(app)
    out = []

    def walk(cmd: Any) -> None:
        out.extend(p for p in cmd.params if isinstance(p, typer.core.TyperOption | typer.core.TyperArgument))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(group)
    return out


def _outcome(runtime: Any, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
    try:
        return "ok", runtime._coerce_value(value, param, ctx)
    except Exception as e:
        return type(e).__name__, str(e)


def test_coercion_matches_typers_own_for_every_option() -> None:
    # Every option of every command, given well-formed and malformed values: the pydantic-free
    # coercion returns what typer's adapters return, or raises the same error.
    from typer._click import Context

    params = _params()
    assert len(params) > 50
    ctx = Context(get_command(app))
    for param in params:
        fast = _app._build_runtime_param(param.type_descriptor)
        slow = _app._typer_build_runtime_param(param.type_descriptor)
        values: list[Any] = [*SAMPLES, param.default] if param.default is not None else list(SAMPLES)
        if param.multiple:
            values = [[v] for v in SAMPLES] + [list(SAMPLES[:3])]
        for v in values:
            assert _outcome(fast, v, param, ctx) == _outcome(slow, v, param, ctx), (param.name, v)
