"""The LlamaIndex quick starts (README.md, docs/llamaindex.md, this package's README)
run without a warning and print what they show.

Each page's Python block that builds a ``SynaptorouteSelector`` runs with stand-in
engines for the ones it names (``billing_engine``...; for the top-level README, whose
block takes ``tools`` and ``llm`` as given, two tools named as its comment says). An
expression statement followed by ``# ...`` lines shows its value: the value's
``repr``, the comment's lines joined by a space, must read the same (its scores
within 0.01).
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.tools import QueryEngineTool
from llamaindex_support import DESCRIPTIONS, EchoEngine

ROOT = Path(__file__).resolve().parents[3]
PAGES = [
    ROOT / "README.md",
    ROOT / "docs" / "llamaindex.md",
    ROOT / "integrations" / "llama-index" / "README.md",
]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"-?\d+\.\d+")


def _same_output(actual: str, shown: str) -> bool:
    """Whether ``actual`` reads as ``shown``, a score within 0.01 of the one shown: the
    model's scores move in their third decimal with the CPU's int8 kernels and the
    onnxruntime release (a shown 0.643 is 0.64345 here, 5e-5 from printing 0.644)."""
    return NUMBER.sub("#", actual) == NUMBER.sub("#", shown) and all(
        abs(float(a) - float(b)) <= 0.01
        for a, b in zip(NUMBER.findall(actual), NUMBER.findall(shown), strict=True)
    )


def _quick_start(page: Path) -> str:
    blocks = [
        b
        for b in FENCE.findall(page.read_text(encoding="utf-8"))
        if "SynaptorouteSelector.from_defaults(" in b
    ]
    assert blocks, f"{page.name} has no LlamaIndex quick start"
    return blocks[0]


def _namespace() -> dict[str, Any]:
    engines = {
        f"{name}_engine": EchoEngine(name=name) for name in ("billing", "support", "general")
    }
    tools = [
        QueryEngineTool.from_defaults(
            EchoEngine(name=name), name=name, description=DESCRIPTIONS[name]
        )
        for name in ("billing", "general")
    ]
    return {**engines, "tools": tools, "llm": MockLLM()}


def _shown(source: str, statement: ast.stmt, following: int | None) -> str | None:
    """The output the comment lines right after ``statement`` show, or ``None``."""
    lines = source.splitlines()[statement.end_lineno or 0 : following]
    comments = []
    for line in lines:
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("#").strip())
    return " ".join(comments) or None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quick_start_runs_without_a_warning_and_shows_its_output(page: Path) -> None:
    if not page.exists():
        pytest.skip(f"{page} is part of the synaptoroute repository, not of this package")
    source = _quick_start(page)
    module = ast.parse(source)
    namespace = _namespace()
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a few-utterances warning fails the page
        for index, statement in enumerate(module.body):
            following = module.body[index + 1].lineno - 1 if index + 1 < len(module.body) else None
            if isinstance(statement, ast.Expr):
                value = eval(compile(ast.Expression(statement.value), page.name, "eval"), namespace)
                shown = _shown(source, statement, following)
                if shown is not None:
                    assert _same_output(repr(value), shown), (page.name, repr(value), shown)
                    checked += 1
            else:
                exec(
                    compile(ast.Module([statement], type_ignores=[]), page.name, "exec"), namespace
                )
    # The top-level README's block shows no output; the others do.
    assert checked or page == ROOT / "README.md"
