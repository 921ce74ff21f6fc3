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


# The wings from the bottom: a module may import its own wing, the top-level foundations and wings
# of a lower rank, never a wing of its own rank or above (cli runs ``greencam bench``, so it sits above bench).
FOUNDATIONS = {
    "greenscreen_cam",
    "greenscreen_cam.config",
    "greenscreen_cam.errors",
    "greenscreen_cam.paths",
    "greenscreen_cam.core",
}
RANKS = {
    "media": 1,
    "track": 2,
    "key": 2,
    "live": 3,
    "link": 3,
    "cluster": 4,
    "app": 5,
    "cli_help": 5,
    "bench": 6,
    "cli": 7,
}
# the two entry points into the CLI (see test_only_the_entry_points_import_the_cli)
ENTRY_POINTS = {"greenscreen_cam.__main__", "greenscreen_cam.bench.__main__"}


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_wings_exist_and_each_says_what_it_is_for():
    for wing in ("media", "track", "key", "live", "link", "cluster", "bench"):
        init = PACKAGE / wing / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 12, f"{wing}/__init__.py needs a docstring saying what the wing is for"
    flat = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__", "__main__", "app", "cli", "cli_help", "config", "core", "errors", "paths"]


def _rank(module: str) -> int:
    return 0 if module in FOUNDATIONS else RANKS[_wing(module)]


def test_no_wing_imports_a_wing_of_its_rank_or_above():
    wrong = [
        f"{module} -> {dep}"
        for module, deps in _imports().items()
        if module not in ENTRY_POINTS
        for dep in deps
        if not (module in FOUNDATIONS and dep in FOUNDATIONS)  # the foundations: one flat layer
        and not (module not in FOUNDATIONS and dep not in FOUNDATIONS and _wing(module) == _wing(dep))
        and _rank(dep) >= _rank(module)
    ]
    assert not wrong, "imports against the wing order: " + ", ".join(sorted(wrong))
    assert (
        _rank("greenscreen_cam.media.sinks") < _rank("greenscreen_cam.track.segmenter") < _rank("greenscreen_cam.cli")
    )


def _own_names(tree: ast.AST) -> set[str]:
    """Names a module defines itself: functions, classes, module/class/local assignments, ``self.x``, arguments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return names


def _private_reads() -> tuple[list[str], dict[str, set[str]]]:
    """``(reach-ins into another greencam module, {third-party private name: modules using it})``."""
    trees = {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}
    own = {m: _own_names(t) for m, t in trees.items()}
    ours = set().union(*own.values())
    reach_ins: list[str] = []
    theirs: dict[str, set[str]] = {}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("greenscreen_cam"):
                reach_ins += [
                    f"{module}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in own[module]:
                    continue
                if node.attr in ours:
                    reach_ins.append(f"{module}:{node.lineno} reads .{node.attr}")
                else:
                    theirs.setdefault(node.attr, set()).add(module)
    return reach_ins, theirs


def test_no_module_reads_another_greencam_module_s_private_names():
    reach_ins, _ = _private_reads()
    assert not reach_ins, "private names read across modules (give them a public name or method): " + "; ".join(
        sorted(reach_ins)
    )


def test_each_third_party_private_is_used_in_one_module_that_names_it():
    """sam2's, aiortc's, aiohttp's and torch's private attributes: one module each, named in a comment there."""
    _, theirs = _private_reads()
    theirs.pop("_exit", None)  # os._exit is the documented way to leave without cleanup
    assert "_forward_sam_heads" in theirs  # the walk really saw sam2's private calls
    spread = {name: sorted(mods) for name, mods in theirs.items() if len(mods) > 1}
    assert not spread, f"third-party private names used in several modules: {spread}"
    unnamed = []
    for name, (module,) in ((n, tuple(m)) for n, m in theirs.items()):
        path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
        text = path.read_text(encoding="utf-8")
        comments = [line for line in text.splitlines() if "#" in line and name in line.split("#", 1)[1]]
        if not comments and name not in (ast.get_docstring(ast.parse(text)) or ""):
            unnamed.append(f"{module}: {name}")
    assert not unnamed, "third-party private names without a comment saying whose they are: " + ", ".join(unnamed)
