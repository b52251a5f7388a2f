"""The README's Python examples and the package's docstring examples run, so they cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples() -> None:
    assert len(_python_blocks()) >= 1


@pytest.mark.parametrize("block", _python_blocks())
def test_readme_python_example_runs(block: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each example runs as written (its own asserts are the checks), in a scratch directory.
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize(
    "module", ["qeltrix_v6", "qeltrix_v6._container", "qeltrix_v6._signed_url", "qeltrix_v6.archive"]
)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(module)
    failures, tried = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert tried > 0, f"{module} has no docstring examples"
    assert failures == 0


def test_quick_start_has_exactly_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick, flags=re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["pip install . && qeltrix demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_quick_start_demo_job_reads_back_the_middle() -> None:
    from qeltrix_v6._demo import run_demo

    lines: list[str] = []
    assert run_demo(size=3 << 20, say=lines.append)
    assert any("matches the original" in line for line in lines)
