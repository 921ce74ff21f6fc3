"""The package's shape: the rooms import downwards only, and nothing below the CLI imports it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "greenscreen_cam"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """``{module: greenscreen_cam modules it imports}``, every import statement (lazy ones too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("greenscreen_cam"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("greenscreen_cam"))
        graph[name] = (deps & modules.keys()) - {name}
    return graph


def test_only_the_entry_points_import_the_cli():
    importers = sorted(m for m, deps in _imports().items() if "greenscreen_cam.cli" in deps)
    # ``python -m greenscreen_cam`` and the ``python -m greenscreen_cam.bench`` alias of ``greencam bench``
    assert importers == ["greenscreen_cam.__main__", "greenscreen_cam.bench.__main__"]


def test_the_bench_package_imports_its_parts_statically():
    # no importlib: every dependency of the benchmarks is visible to the import graph (and to mypy)
    graph = _imports()
    assert "greenscreen_cam.bench.serve" in graph["greenscreen_cam.bench.suite"]
    for path in (PACKAGE / "bench").glob("*.py"):
        assert "importlib.import_module" not in path.read_text(encoding="utf-8"), path.name


def test_no_module_is_over_800_lines():
    lines = {
        p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in lines.items() if n > 800} == {}


def test_no_import_cycles():
    graph = _imports()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 10  # the walk really saw the package


def test_no_merge_conflict_markers_were_committed():
    """A merge left unresolved shows up here, not in a user's README."""
    root = PACKAGE.parent
    files = [root / "README.md", root / "Makefile", *(root / "docs").glob("*.md"), *root.glob("configs/*")]
    files += [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.js"), *PACKAGE.rglob("*.html"), *(root / "tests").glob("*.py")]
    markers = ("<" * 7 + " ", "=" * 7 + "\n", ">" * 7 + " ")
    found = [
        f"{path.relative_to(root)}:{n}"
        for path in files
        if path.is_file()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1)
        if line.startswith(markers)
    ]
    assert not found, f"unresolved merge conflict markers at {', '.join(found)}"
