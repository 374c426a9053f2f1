"""The project's import graph, read from the source (AST, nothing executed): no cycle anywhere,
and the arrows between packages point the way docs/architecture.md draws them."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "engines", "calibration", "firmware_bridge", "twin")
#: the only modules of edge that the other packages may import: they import nothing of the project
EDGE_FOUNDATION = {"edge.errors", "edge.log", "edge.liveness"}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of the given packages under ``root``, by dotted name."""
    return {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its source (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` of a project module; a name inside a module counts as the module
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_no_module_of_the_project_imports_itself_back_through_others(graph: dict[str, set[str]]) -> None:
    """No chain of imports, lazy ones included, leads from a module back to itself."""
    assert cycles(graph) == []


def test_lower_packages_import_of_edge_only_its_errors_and_log(graph: dict[str, set[str]]) -> None:
    """calibration, firmware_bridge, twin and the engine's serving side import nothing of edge but
    edge.errors, edge.log and edge.liveness; only engines.training, which sits above both, uses edge's detector."""
    wrong = {
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if in_package(target, "edge") and target not in EDGE_FOUNDATION
        and not in_package(module, "edge") and not in_package(module, "engines.training")
    }
    assert wrong == set()


def test_training_and_torch_stay_out_of_the_node(graph: dict[str, set[str]]) -> None:
    """Only the command line and commissioning import engines.training, and no module outside it imports torch."""
    wrong = {(m, t) for m, ts in graph.items() for t in ts
             if in_package(t, "engines.training") and not in_package(m, "engines.training")
             and not in_package(m, "edge.cli") and not in_package(m, "edge.commission")}
    assert wrong == set()
    torch_users = set()
    for name, path in project_modules(REPO).items():
        if in_package(name, "engines.training"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(in_package(n, "torch") for n in names):
                torch_users.add(name)
    assert torch_users == set()


def test_twin_and_the_rig_are_the_only_twin_users_below_edge(graph: dict[str, set[str]]) -> None:
    """calibration and the engine's serving side never import the twin; in firmware_bridge only the rig does."""
    wrong = {(m, t) for m, ts in graph.items() for t in ts if in_package(t, "twin")
             and (in_package(m, "calibration") or (in_package(m, "firmware_bridge") and m != "firmware_bridge.rig")
                  or (in_package(m, "engines") and not in_package(m, "engines.training")))}
    assert wrong == set()


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    """A cycle closed by an import inside a function, and a relative import, are both seen."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import thing\n")
    g = import_graph(tmp_path, ["pkg"])
    assert g["pkg.d"] == {"pkg.a"}
    assert cycles(g) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]


def layer_of(module: str) -> str:
    """The part of the project a module belongs to, as docs/architecture.md names them."""
    parts = module.split(".")
    if parts[0] == "edge":
        if len(parts) > 1 and parts[1] in ("node", "link", "ground", "cli", "testing", "commission"):
            return f"edge.{parts[1]}"
        if module in EDGE_FOUNDATION:
            return "edge.errors/log"
        return "edge stages"
    if parts[0] == "engines":
        return "engines.training" if len(parts) > 1 and parts[1] == "training" else "engines (serving)"
    return parts[0]


#: what each part may import, besides itself and edge.errors / edge.log (docs/architecture.md)
ALLOWED = {
    "edge.cli": {"edge.node", "edge.ground", "edge.testing", "edge.commission", "engines.training", "edge stages", "edge.link",
                 "firmware_bridge", "calibration", "engines (serving)", "twin"},
    "edge.node": {"edge stages", "edge.link", "calibration", "engines (serving)", "firmware_bridge"},
    "edge.commission": {"edge stages", "edge.node", "calibration", "engines (serving)", "engines.training",
                        "firmware_bridge", "twin"},
    "edge.ground": {"edge stages", "edge.link", "firmware_bridge", "engines (serving)"},
    "edge.testing": {"edge stages", "edge.ground", "firmware_bridge", "twin"},
    "engines.training": {"edge stages", "engines (serving)", "twin"},
    "edge stages": {"edge.link", "calibration", "engines (serving)", "firmware_bridge"},
    "edge.link": {"edge stages"},
    "firmware_bridge": {"twin"},
    "calibration": set(),
    "engines (serving)": set(),
    "twin": set(),
    "edge.errors/log": set(),
}


def test_every_part_imports_only_what_the_architecture_page_draws(graph: dict[str, set[str]]) -> None:
    """Between the parts of the project, only the arrows docs/architecture.md draws exist."""
    drawn = {(layer_of(m), layer_of(t)) for m, ts in graph.items() for t in ts}
    extra = {(a, b) for a, b in drawn if a != b and b != "edge.errors/log" and b not in ALLOWED[a]}
    assert extra == set()


def test_no_module_of_edge_is_over_400_lines() -> None:
    """Every module of the node reads in one sitting: none is longer than 400 lines."""
    long = {name: n for name, path in project_modules(REPO, ["edge"]).items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
