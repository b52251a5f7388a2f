"""Claims are tests: every test that docs/SECURITY.md names exists (so a rename cannot leave a
claim pointing at nothing), every test file it names exists, and the declared MSRV is the
toolchain the workspace is actually built with."""

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


def test_declared_msrv_is_the_toolchain_that_builds() -> None:
    """Cargo.toml's rust-version is a claim too: it must be the pinned toolchain that CI builds
    and tests with, not an older one nobody ran."""
    import tomllib

    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]
    channel = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    assert channel.startswith(workspace["rust-version"] + "."), (workspace["rust-version"], channel)


def _format_sections() -> list[tuple[int, ...]]:
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    return [tuple(int(n) for n in m.split(".")) for m in re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", text, re.M)]


def test_format_md_sections_are_numbered_in_order() -> None:
    sections = _format_sections()
    assert len(sections) > 15
    assert sections == sorted(sections), "FORMAT.md sections out of order"
    assert len(set(sections)) == len(sections), "FORMAT.md has a section number twice"


def test_every_format_md_cross_reference_exists() -> None:
    """``FORMAT.md section 12.2`` in code and docs, and ``section 15`` inside FORMAT.md, name a
    section that exists (renumbering cannot leave a dangling reference)."""
    known = {".".join(map(str, s)) for s in _format_sections()}
    pattern = re.compile(r"FORMAT\.md(?:\)|\]\([^)]*\))?,? (?:section |§)?(\d+(?:\.\d+)*)")
    refs: list[tuple[str, str]] = []
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benches").glob("*.md")]
    sources += [*(ROOT / "python").rglob("*.py"), *(ROOT / "rust").rglob("*.rs"), *(ROOT / "tests").glob("*.py")]
    for path in sources:
        text = path.read_text()
        refs += [(path.name, n) for n in pattern.findall(text)]
        if path.name == "FORMAT.md":
            refs += [(path.name, n) for n in re.findall(r"\bsections? (\d+(?:\.\d+)*)", text)]
    assert len(refs) > 20
    dangling = sorted({(f, n.rstrip(".")) for f, n in refs if n.rstrip(".") not in known})
    assert not dangling, f"references to FORMAT.md sections that do not exist: {dangling}"


def test_documents_cited_by_the_code_are_in_the_repository() -> None:
    """A citation such as ``docs/DESIGN.md "Servers"`` names a file of this repository and a
    heading in it, not a path on one developer's machine."""
    cited: set[tuple[str, str]] = set()
    for path in [*(ROOT / "rust").rglob("*.rs"), *(ROOT / "python").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        cited |= set(re.findall(r'(docs/[A-Z]+\.md)[ ,(]*"([^"]+)"', path.read_text()))
    assert ("docs/DESIGN.md", "Servers") in cited
    for doc, heading in cited:
        text = (ROOT / doc).read_text()
        assert re.search(rf"^#+ .*{re.escape(heading)}", text, re.M), f"{doc} has no heading {heading!r}"
    outside = "/work/" + "shared"  # the brief's location on the team's machines
    for path in [*(ROOT / "python").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "rust").rglob("*.rs")]:
        assert outside not in path.read_text(), f"{path} cites a path outside the repository"
