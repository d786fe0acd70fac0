"""The package's structure: the folders are the layers and imports only point down (imports
inside functions count too: a lazy import is still a dependency); no import circles; small
modules.

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


# The layers, top to bottom: a module may import its own package and the layers below it, never
# one above (``files`` never imports ``run``, ``run`` never ``cli``, ``quant`` only the leaves).
LAYERS = ["cli", "run", "files", "models", "data", "config", "quant"]
# Leaf modules every layer may use: they import nothing of the package but each other.
LEAVES = {"diffq_cli.errors", "diffq_cli.units", "diffq_cli.fileio"}
# A module holds one idea whole: the cap catches a module that grew a second idea, and is not a
# reason to split one (a mixin listing its host's privates is a split in the wrong place).
MAX_LINES = 450


def layer_of(module: str) -> int | None:
    """Index in LAYERS (0 = top), len(LAYERS) for a leaf, None for the package's __init__ and
    __main__ (the entry points)."""
    if module in LEAVES:
        return len(LAYERS)
    if module == "diffq_cli":  # the library API: re-exports quant
        return LAYERS.index("quant")
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def wrong_way(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import that points up or sideways between layers."""
    bad = []
    for name, deps in sorted(graph.items()):
        mine = layer_of(name)
        if mine is None or name == "diffq_cli":  # the entry points import what they expose
            continue
        for dep in sorted(deps):
            theirs = layer_of(dep)
            same_package = dep.split(".")[:2] == name.split(".")[:2]
            leaves = theirs == mine == len(LAYERS)
            if theirs is None or (theirs <= mine and not same_package and not leaves):
                bad.append((name, dep))
    return bad


def test_imports_only_point_down():
    bad = wrong_way(import_graph())
    assert not bad, "\n".join(f"{a} imports {b}" for a, b in bad)


def test_a_wrong_way_import_is_caught():
    graph = {"diffq_cli.files.artifact": {"diffq_cli.run.train", "diffq_cli.quant.state"},
             "diffq_cli.quant.state": {"diffq_cli.units"},
             "diffq_cli.units": {"diffq_cli.quant.state"},
             "diffq_cli.run.train": {"diffq_cli.files.artifact", "diffq_cli.cli.app"}}
    assert wrong_way(graph) == [("diffq_cli.files.artifact", "diffq_cli.run.train"),
                                ("diffq_cli.run.train", "diffq_cli.cli.app"),
                                ("diffq_cli.units", "diffq_cli.quant.state")]


def test_the_top_level_holds_only_leaves_entry_points_and_layers():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert {f"diffq_cli.{m}" for m in top} <= LEAVES, sorted(top)
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


def test_the_library_imports_nothing_but_leaves():
    graph = import_graph()
    for leaf in LEAVES:
        assert graph[leaf] <= LEAVES, f"{leaf} must stay a leaf, imports {sorted(graph[leaf])}"
    for name, deps in graph.items():
        if name.startswith("diffq_cli.quant"):
            outside = {d for d in deps if not d.startswith("diffq_cli.quant") and d not in LEAVES}
            assert not outside, f"{name} imports {sorted(outside)}"


def _quantizer_privates() -> set[str]:
    """Private names of the quantizer classes: ``self._x`` attributes and ``_x`` methods."""
    names = set()
    for path in (PACKAGE / "quant").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if (isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name)
                            and item.value.id == "self" and item.attr.startswith("_")):
                        names.add(item.attr)
                    if isinstance(item, ast.FunctionDef) and item.name.startswith("_"):
                        names.add(item.name)
    return {n for n in names if not n.startswith("__")}


def private_reads(tree: ast.AST, privates: set[str]) -> list[str]:
    """``obj._x`` reads in ``tree`` of a quantizer's private ``_x`` on anything but ``self``."""
    return [f"{ast.unparse(node)} (line {node.lineno})" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in privates
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def test_nothing_outside_quant_reads_a_quantizers_privates():
    """The run, the files and the CLI use the quantizers' public methods only."""
    privates = _quantizer_privates()
    assert {"_qparams", "_true_bits", "_encode", "_float_bits"} <= privates
    bad = {}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "quant" and (found := private_reads(
                ast.parse(path.read_text()), privates)):
            bad[str(path.relative_to(PACKAGE))] = found
    assert not bad, bad
    caught = private_reads(ast.parse("q = quantizer._qparams[0]"), privates)
    assert caught == ["quantizer._qparams (line 1)"]


def test_the_grid_is_switched_by_name_in_at_most_two_places():
    """Grids are objects (``quant/grids.py``); code asks them, it does not compare names."""
    import re

    switch = re.compile(r"\bgrid\s*(==|!=|in\b)\s*[\"'(]")
    places = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
              for i, line in enumerate(p.read_text().splitlines(), 1) if switch.search(line)]
    assert len(places) <= 2, places


def test_the_header_rule_lives_in_one_place():
    """Every size (true, differentiable, fixed-width, a saved state's) counts headers with
    ``quant.sizes.header_bits``: ``HEADER_BITS`` and the width-offset rule appear there only."""
    rule = ("HEADER_BITS", "bit_length() *")
    places = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
              if any(r in p.read_text() for r in rule)]
    assert places == ["quant/sizes.py"], places


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
