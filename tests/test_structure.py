"""The package keeps its shape (issue 15): no import cycles between the modules of
``qeltrix_v6`` (imports inside functions count too: a lazy import that closes a cycle is
still a cycle), and no module grows past a size a reader can hold in mind."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "python" / "qeltrix_v6"
MAX_LINES = 1000
NATIVE = {p.name.split(".")[0] for p in PKG.glob("*.pyi")}  # extension modules


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                subs = {f"{target}.{a.name}" for a in node.names}
                # `from . import _core` names the Rust extension (no .py file): not an edge.
                native = {n for n in subs if n.rsplit(".", 1)[1] in NATIVE}
                deps |= (subs & modules.keys()) or ({target} & modules.keys() if not native else set())
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qeltrix_v6"):
                deps |= {node.module} & modules.keys()  # type: ignore[arg-type]
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_import_graph_is_read_correctly() -> None:
    graph = _import_graph()
    assert "qeltrix_v6.errors" in graph["qeltrix_v6._container"]
    assert "qeltrix_v6.cli._app" in graph["qeltrix_v6.cli._servers"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_is_too_long_to_read() -> None:
    long = {p.name: n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concern: {long}"
