"""The package's structure: no import circles between its modules (imports inside functions
count too: a lazy import is still a dependency), and a library that never imports the CLI side.

Run alone with ``pytest tests/test_structure.py -q``; the graph printed on failure names the
circle.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffq_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from diffq_cli.quant import state" imports diffq_cli.quant.state
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None. A package's ``__init__`` re-exporting its own modules is not
    a circle (``diffq_cli.quant`` -> ``diffq_cli.quant.diffq`` -> ``diffq_cli.quant``... only
    when the module imports the package object itself, which we flag too)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # A submodule importing its parent package's __init__ is how re-exports look from
            # the inside; only module-to-module edges form real circles.
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


# Leaf modules of the package (no imports from it, no torch) that the library may use.
LEAVES = {"diffq_cli.units"}


def test_the_library_never_imports_the_cli_side():
    graph = import_graph()
    for leaf in LEAVES:
        assert not graph[leaf], f"{leaf} must stay a leaf, imports {sorted(graph[leaf])}"
    for name, deps in graph.items():
        if name.startswith("diffq_cli.quant"):
            outside = {d for d in deps if not d.startswith("diffq_cli.quant") and d not in LEAVES}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
