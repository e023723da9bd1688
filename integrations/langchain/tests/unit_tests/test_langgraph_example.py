"""examples/langgraph_supervisor.py runs offline and dispatches each question to its agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "langgraph_supervisor.py"


def test_supervisor_example_dispatches_to_each_agent() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "supervisor -> billing, fallback, smalltalk, tech"
    expected = [
        ("'How do I get my money back?'", "billing", "Billing agent:"),
        ('"my password doesn\'t work anymore"', "tech", "Tech agent:"),
        ('"hello, how\'s it going?"', "smalltalk", "Smalltalk agent:"),
        ("'What is the boiling point of mercury?'", "fallback", "Fallback:"),
    ]
    for line, (question, node, reply) in zip(lines[1:5], expected, strict=True):
        assert line.startswith(question), line
        assert f"-> {node} " in line, line
        assert f"): {reply}" in line, line
    assert lines[5] == "checkpointed decision of sync-0: billing matched"
    assert lines[6] == "async: billing, tech, smalltalk, fallback"
    assert len(lines) == 7
