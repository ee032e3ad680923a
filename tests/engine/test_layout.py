"""The engine's layout: sub-packages by pipeline stage, no import cycles, no flat modules creeping back.

Read with ``ast`` only (nothing is imported), so every import counts: module level, inside
functions, under ``TYPE_CHECKING``, and ``importlib.import_module`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "workers" / "engine"
ROOT_PACKAGE = "workers.engine"

TOP_LEVEL_MODULES = {"__init__.py", "config.py", "errors.py", "pipeline.py", "progress.py", "weights.py"}
"""The only modules allowed directly in ``workers/engine``; anything else belongs in a stage."""

TOP_LEVEL_DIRS = {"io", "models", "influence", "objectives", "unlearning", "evaluation", "examples", "vendor"}
"""The stage sub-packages (with the examples and the vendored data), the only folders allowed in
``workers/engine``."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((ROOT_PACKAGE, *parts))


def _engine_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ENGINE.rglob("*.py"))
            if "__pycache__" not in path.parts}


def _with_packages(name: str, modules: dict[str, Path]) -> set[str]:
    """``name`` and the packages whose ``__init__`` importing it runs (all within the engine)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & modules.keys()


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The engine module ``target`` names, or its longest prefix that is one (``a.b.attr`` → ``a.b``)."""
    parts = target.split(".")
    for end in range(len(parts), 1, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Engine modules that ``name`` imports anywhere in its source (and the packages they run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets.append(module)
            targets.extend(f"{module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            targets.append(node.args[0].value)
    found: set[str] = set()
    for target in targets:
        if target == ROOT_PACKAGE or target.startswith(ROOT_PACKAGE + "."):
            resolved = _resolve(target, modules)
            if resolved is not None:
                found |= _with_packages(resolved, modules)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _engine_modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None when the graph is acyclic."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_deferred_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "workers.engine.io.inputs" in graph["workers.engine.pipeline"]
    assert "workers.engine.influence.full_scope" in graph["workers.engine.pipeline"]  # inside a function
    assert "workers.engine.io.inputs" in graph["workers.engine.evaluation.report"]  # under TYPE_CHECKING
    assert "workers.engine.unlearning.methods" in graph["workers.engine.unlearning.methods.registry"]


def test_engine_imports_have_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in the engine: " + " → ".join(cycle or [])


def test_top_level_holds_only_the_allowed_modules() -> None:
    entries = [p for p in ENGINE.iterdir() if p.name != "__pycache__"]
    modules = {p.name for p in entries if p.is_file() and p.suffix == ".py"}
    folders = {p.name for p in entries if p.is_dir()}
    assert modules - TOP_LEVEL_MODULES == set(), "put new engine modules in the sub-package of their stage"
    assert TOP_LEVEL_MODULES - modules == set()
    assert folders - TOP_LEVEL_DIRS == set(), "new top-level folders of workers/engine need a place here"


def test_every_sub_package_is_documented_and_import_light() -> None:
    """Each package ``__init__`` says what its stage does and imports nothing, so importing one
    module (``workers.engine.config`` from the torch-free front end) never pulls in a stage."""
    for init in sorted(ENGINE.rglob("__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init} needs a docstring saying what the stage does"
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                   and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        assert imports == [], f"{init} imports; import the stage's modules directly instead"
    for folder in sorted(ENGINE.rglob("*")):
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder} is missing its __init__.py"
