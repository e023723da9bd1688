"""The example script runs offline and routes as it says."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "langchain_router.py"


def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} is part of the synaptoroute repository, not of this package")
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "How do I get my money back?          billing" in out
    assert "What are your opening hours?         -" in out
    assert "stream:" in out and "Tech support: try signing out and in." in out
    assert "ainvoke: Billing here" in out
