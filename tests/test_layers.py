"""The layering rule of CONTRIBUTING.md, checked on the import graph (imports inside functions included).

A module imports only from its own layer or below, and the graph has no cycle. An import inside a function
is a dependency all the same: it is counted. ``if TYPE_CHECKING:`` blocks are not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cxrtl"

# Bottom to top. A name covers the module and everything below it; the longest matching name wins.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "base",
        [
            "cxrtl._version",
            "cxrtl.errors",
            "cxrtl.fsutil",
            "cxrtl.logs",
            "cxrtl.formatting",
            "cxrtl.results",
            "cxrtl.config",
            "cxrtl.device",
            "cxrtl.provenance",
            "cxrtl.machine",
            "cxrtl.onnx_session",
        ],
    ),
    ("data", ["cxrtl.data"]),
    (
        "model",
        [
            "cxrtl.guard",
            "cxrtl.decisions",
            "cxrtl.bundle_manifest",
            "cxrtl.hub",
            "cxrtl.model_ref",
            "cxrtl.model",
            "cxrtl.checkpoint",
            "cxrtl.transfer",
        ],
    ),
    ("work", ["cxrtl.training", "cxrtl.evaluation", "cxrtl.integrity", "cxrtl.segmentation"]),
    ("inference", ["cxrtl.inference"]),
    ("applications", ["cxrtl.paper", "cxrtl.serve", "cxrtl.tracking"]),
    ("shell", ["cxrtl.commands", "cxrtl.cli", "cxrtl.__main__", "cxrtl"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module -> the cxrtl modules it imports, at module level or inside functions."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            if isinstance(node, ast.Import):
                deps.update(r for a in node.names if a.name.startswith("cxrtl") and (r := resolve(a.name)))
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                full = ".".join([*base, *([node.module] if node.module else [])])
                if not full.startswith("cxrtl"):
                    continue
                for alias in node.names:  # `from . import x` may name a module
                    target = resolve(f"{full}.{alias.name}")
                    deps.add(target if target and target != "cxrtl" else resolve(full) or full)
        deps.discard(name)
        graph[name] = deps
    return graph


def layer_of(module: str) -> int:
    best = (-1, -1)
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best[1]:
                best = (i, len(n))
    return best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if layer_of(m) < 0]
    assert unplaced == []


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # The cycle detector itself: a -> b at module level, b -> a inside a function, is a cycle.
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    graph = import_graph()
    assert "cxrtl.inference.predict" in graph["cxrtl.commands.predict"]  # imported inside run()


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}  # split a module by job before it grows past a screenful of screens
