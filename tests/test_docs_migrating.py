"""docs/migrating.md's synaptoroute examples run offline and show what they say.

The rule: every ```python block of the page runs, except a block right after a
``<!-- doc-test: skip (reason) -->`` line (the marker tests/test_docs_shell.py reads
above shell blocks). The page puts that marker above each block of semantic-router
code, which is not installed here, and above synaptoroute code that needs the network.

The blocks run in page order in one namespace, as a reader goes down the page (later
blocks use the router the first one builds), in a temporary folder holding
``sr_routes.json``: what the page's semantic-router block writes, in the shape of
``Route.to_dict()`` of its 0.x and 1.x releases. A top-level expression statement
whose line ends in ``# -> VALUE`` shows its value: the value's ``repr`` must read VALUE.
Line numbers in a failure are the page's.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from doc_blocks import fenced

from synaptoroute import AdaptiveRouter

PAGE = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"
SHOWN = re.compile(r"#\s*->\s*(.+?)\s*$")

#: What semantic-router's routes look like once written out by the page's block: one
#: route as 1.x writes it, one with 0.x's extra fields (which the page drops).
SR_ROUTES = [
    {
        "name": "billing",
        "utterances": ["I need a refund", "I was charged twice"],
        "description": "Payments and refunds",
        "confidence_threshold": 0.9,
        "metadata": {"team": "payments"},
    },
    {
        "name": "tech",
        "utterances": ["The app keeps crashing", "I can't log in"],
        "description": None,
        "function_schemas": None,
        "llm": None,
        "score_threshold": 0.82,
        "metadata": {},
    },
]


@dataclass
class Block:
    """One ```python block: the page line its code starts on, its code, whether it runs."""

    line: int
    source: str
    skipped: bool


def blocks(text: str) -> list[Block]:
    """The page's python blocks, in order."""
    # The code starts on the line after the fence.
    return [Block(f.line + 1, f.code, f.skipped) for f in fenced(text, ("python",))]


def shown_values(source: str) -> dict[int, str]:
    """Line number -> the VALUE of a ``# -> VALUE`` comment on that line (real comments
    only: a ``#`` inside a string is not one)."""
    shown = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and (match := SHOWN.fullmatch(token.string)):
            shown[token.start[0]] = match[1]
    return shown


def run_block(block: Block, namespace: dict[str, Any], filename: str) -> int:
    """Run one block statement by statement; returns how many shown values it checked."""
    # Padded so that tracebacks and messages give the page's line numbers.
    source = "\n" * (block.line - 1) + block.source
    shown = shown_values(source)
    checked = 0
    for statement in ast.parse(source, filename).body:
        value_shown = shown.get(statement.end_lineno or 0)
        if isinstance(statement, ast.Expr) and value_shown is not None:
            value = eval(compile(ast.Expression(statement.value), filename, "eval"), namespace)
            assert repr(value) == value_shown, (
                f"{filename}:{statement.lineno} shows {value_shown}, the code gives {value!r}"
            )
            checked += 1
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), filename, "exec"), namespace)
    return checked


def run_page(text: str, filename: str) -> tuple[int, int]:
    """Run every block of a page not marked skip; returns (blocks run, values checked)."""
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    ran = checked = 0
    try:
        for block in blocks(text):
            if not block.skipped:
                checked += run_block(block, namespace, filename)
                ran += 1
    finally:
        for value in namespace.values():  # the routers the page made and left open
            if isinstance(value, AdaptiveRouter):
                value.close()
    return ran, checked


@pytest.mark.model
@pytest.mark.timeout(600)
def test_the_pages_synaptoroute_examples_run_and_show_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sr_routes.json").write_text(json.dumps(SR_ROUTES), encoding="utf-8")
    with warnings.catch_warnings():
        # A warning in an example (a dropped head, a few-rows fit) would puzzle a reader.
        warnings.simplefilter("error")
        ran, checked = run_page(PAGE.read_text(encoding="utf-8"), "docs/migrating.md")
    assert ran >= 8 and checked >= 10
    # The conversion block wrote a routes file with the fields both libraries have.
    written = yaml.safe_load((tmp_path / "routes.yaml").read_text(encoding="utf-8"))
    assert written == {
        "threshold": 0.5,
        "routes": [
            {
                "name": "billing",
                "utterances": ["I need a refund", "I was charged twice"],
                "description": "Payments and refunds",
                "metadata": {"team": "payments"},
            },
            {"name": "tech", "utterances": ["The app keeps crashing", "I can't log in"]},
        ],
    }


def test_every_semantic_router_block_is_marked_skip() -> None:
    found = blocks(PAGE.read_text(encoding="utf-8"))
    theirs = [b for b in found if "semantic_router" in b.source]
    assert theirs and all(b.skipped for b in theirs)


# -- the harness itself ------------------------------------------------------------------
def test_a_marked_block_is_skipped_and_values_are_checked() -> None:
    page = (
        "<!-- doc-test: skip (semantic-router 1.x) -->\n```python\nraise SystemExit\n```\n\n"
        "```python\nx = [1, 2]\nlen(x)  # -> 2\ns = '# -> 3'  # a comment, not shown\n```\n"
    )
    assert [b.skipped for b in blocks(page)] == [True, False]
    assert run_page(page, "page.md") == (1, 1)


def test_a_wrong_shown_value_fails_with_the_page_line() -> None:
    page = "Text.\n\n```python\nx = 1\nx + 1  # -> 3\n```\n"
    with pytest.raises(AssertionError, match=r"page\.md:5 shows 3, the code gives 2"):
        run_page(page, "page.md")


def test_an_example_that_raises_fails() -> None:
    page = "```python\nimport synaptoroute\nsynaptoroute.no_such_name\n```\n"
    with pytest.raises(AttributeError):
        run_page(page, "page.md")
