"""The core's layers import one way (docs/architecture.md), checked on the source.

Every ``from .x import`` of the package, wherever it stands (module level, inside a
function, under ``TYPE_CHECKING``), must reach the same layer or a lower one: there is
no exception. Module-level imports that run on import must also form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "synaptoroute"

#: Lowest first; a module may import from its own layer and those before it.
LAYERS: list[set[str]] = [
    {"models", "checks", "exceptions", "_cpu", "_blas", "_fork", "forking", "_buffers"},
    {"encoder", "adapters"},
    {"index", "int8", "ann", "lexical"},
    {"decision"},
    {"storage", "postgres"},
    {"datasets", "evaluation", "fitting"},
    {"router", "batching"},
    {"routes_file", "cli", "_completion", "__main__", "__init__", "server", "testing"},
]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    msg = f"synaptoroute.{module} has no layer: add it to LAYERS (and docs/architecture.md)"
    raise AssertionError(msg)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.with_suffix("").relative_to(PACKAGE).parts
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether it runs when ``module`` is imported) for each import."""
    package = module.split(".")[:-1]  # "server.app" -> ["server"]; "__init__" -> []
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            runs = at_import
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                runs = False
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                runs = False
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package[: len(package) - (child.level - 1)] if child.level > 1 else package
                target = ".".join([*base, *([child.module] if child.module else [])])
                if target:
                    found.append((target, runs))
            visit(child, runs)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def test_every_import_goes_down_or_sideways() -> None:
    upward = set()
    for module, path in _modules().items():
        for target, _ in _imports(module, path):
            if _layer(target) > _layer(module):
                upward.add((module.split(".")[0], target.split(".")[0]))
    assert not upward, f"upward imports: {sorted(upward)}"


def test_no_import_cycle_at_import_time() -> None:
    modules = _modules()
    graph = {
        module: {t for t, runs in _imports(module, path) if runs and t in modules}
        for module, path in modules.items()
    }
    done: set[str] = set()

    def walk(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = " -> ".join([*stack[stack.index(node) :], node])
            raise AssertionError(f"import cycle: {cycle}")
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*stack, node])
        done.add(node)

    for module in sorted(graph):
        walk(module, [])


#: A module longer than this says at its top why it is one module.
MAX_LINES = 400


def test_a_long_module_says_why_it_is_one() -> None:
    unexplained = []
    for module, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        if source.count("\n") <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(source)) or ""
        if f"over {MAX_LINES} lines" not in doc:
            unexplained.append(f"{module} ({source.count(chr(10))} lines)")
    assert not unexplained, f"over {MAX_LINES} lines without a reason at the top: {unexplained}"
