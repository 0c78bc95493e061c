"""The package order, read from the code itself: every project .py file's imports (module
level and inside functions) with `ast`, nothing imported or run.

    entry points (run_camera.py, app/cli.py, bisenet_edge, bench/, tests/, testkit/)
      -> app -> calibration -> engines -> training -> core

- core/ imports no other project package (it is the ground everything stands on);
- nothing outside app/ imports app/, except the entry points;
- no import circle among the project's modules.

docs/design.md draws the same map.
"""
from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "training", "engines", "calibration", "app")   # bottom to top
ENTRY_POINTS = ("run_camera", "app.cli", "bisenet_edge", "bench", "tests", "testkit", "conftest")

# Known offenders (none left): an entry that no longer exists fails too, so these
# lists can only shrink.
KNOWN_APP_IMPORTS: set[tuple[str, str]] = set()     # (importer, imported app module)
KNOWN_CIRCLES: set[frozenset[str]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()          # (importer, imported module above it)

def project_files() -> dict[str, Path]:
    """Module name -> file, for every .py of the project's packages, bench/, tests/, testkit/ and the
    entry scripts at the top (virtual environments and hidden folders skipped)."""
    found = {}
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))   # never walked into: a venv holds thousands
        for name in sorted(n for n in names if n.endswith(".py") and not n.startswith(".")):
            path = Path(folder, name)
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules `module` imports anywhere in its file (a function's lazy import
    counts: it still needs that module below it)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:   # `from pkg import thing`: thing may be no module
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Parsed once per run: every test reads the same graph (none changes it)."""
    files = project_files()
    modules = set(files)
    return {module: imports_of(module, path, modules) for module, path in files.items()}


def package_of(module: str) -> str:
    return module.split(".")[0]


def is_entry_point(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    edges = {p: set() for p in PACKAGES}
    for module, imported in graph.items():
        if package_of(module) in edges:
            edges[package_of(module)] |= {package_of(m) for m in imported if package_of(m) in edges} - {package_of(module)}
    return edges


def test_the_reader_sees_the_project():
    graph = import_graph()
    assert {"core.sidecar", "engines.load", "app.cli", "run_camera", "tests.test_layout"} <= set(graph)
    assert "core.errors" in graph["core.sidecar"] and "core.validate" in graph["core.sidecar"]
    assert "app.run" in graph["run_camera"]


def test_core_imports_no_other_project_package():
    graph = import_graph()
    above = {f"{m} -> {i}" for m, imported in graph.items() if package_of(m) == "core"
             for i in imported if package_of(i) != "core"}
    assert not above, "core/ is the ground package and imports only itself:\n" + "\n".join(sorted(above))


def test_only_entry_points_import_app():
    graph = import_graph()
    found = {(m, i) for m, imported in graph.items() if package_of(m) != "app" and not is_entry_point(m)
             for i in imported if package_of(i) == "app"}
    new = found - KNOWN_APP_IMPORTS
    assert not new, "only run_camera.py, app/cli.py, the bisenet_edge API, bench/, tests/ and testkit/ may import app/:\n" + \
        "\n".join(f"{m} -> {i}" for m, i in sorted(new))
    gone = KNOWN_APP_IMPORTS - found
    assert not gone, f"fixed, remove them from KNOWN_APP_IMPORTS: {sorted(gone)}"


def test_no_import_circle():
    graph = import_graph()
    found = {frozenset(c) for c in circles(graph)}
    new = found - KNOWN_CIRCLES
    assert not new, "import circles (each a set of modules that import each other):\n" + \
        "\n".join(" <-> ".join(sorted(c)) for c in new)
    gone = KNOWN_CIRCLES - found
    assert not gone, f"fixed, remove them from KNOWN_CIRCLES: {[sorted(c) for c in gone]}"


def test_packages_import_only_downwards():
    """Each package imports only those below it in PACKAGES; the package order is printed
    (pytest -s) as a map of what imports what."""
    graph = import_graph()
    for package, imported in package_edges(graph).items():
        print(f"{package:<12} -> {', '.join(sorted(imported, key=PACKAGES.index)) or '(nothing)'}")
    found = {(m, i) for m, imported in graph.items() if package_of(m) in PACKAGES for i in imported
             if package_of(i) in PACKAGES and PACKAGES.index(package_of(i)) > PACKAGES.index(package_of(m))}
    new = found - KNOWN_UPWARD
    assert not new, f"imports pointing up the order {' < '.join(PACKAGES)}:\n" + \
        "\n".join(f"{m} -> {i}" for m, i in sorted(new))
    gone = KNOWN_UPWARD - found
    assert not gone, f"fixed, remove them from KNOWN_UPWARD: {sorted(gone)}"


def test_module_names_do_not_collide_across_the_packages():
    """One file name means one thing: no two modules of core/, training/, engines/,
    calibration/ and app/ share a name (a reader never has to ask which `validate`)."""
    seen: dict[str, list[str]] = {}
    for module in import_graph():
        if package_of(module) in PACKAGES and module.split(".")[-1] not in PACKAGES:
            seen.setdefault(module.split(".")[-1], []).append(module)
    twins = {name: sorted(mods) for name, mods in seen.items() if len(mods) > 1}
    assert not twins, f"modules sharing a name: {twins}"


def test_no_test_file_imports_another():
    """Shared test code lives in testkit/ (bench/ uses it too), never in a test file."""
    graph = import_graph()
    found = {(m, i) for m, imported in graph.items() if m.startswith("tests.") for i in imported
             if i.startswith("tests.") and i.split(".")[-1].startswith("test_")}
    assert not found, "\n".join(f"{m} -> {i}" for m, i in sorted(found))
