"""Claims are tests: every test that docs/SECURITY.md names exists (so a rename cannot leave a
claim pointing at nothing), and every test file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.M))
    return names


def test_every_test_named_in_security_md_exists() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    named = set(re.findall(r"\b(test_\w+)\b", text)) - {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    assert named, "SECURITY.md names no test"
    missing = sorted(named - _defined_tests())
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"


def test_every_test_file_named_in_security_md_exists() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    files = set(re.findall(r"tests/(test_\w+\.py)", text))
    assert files
    missing = sorted(f for f in files if not (ROOT / "tests" / f).exists())
    assert not missing, f"SECURITY.md names test files that do not exist: {missing}"
