"""examples/llamaindex_router.py runs offline and routes as its comments say."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "llamaindex_router.py"


def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} is part of the synaptoroute repository, not of this package")
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    sync, rest = out.split("RouterQueryEngine, async", 1)
    answers, retrieved = rest.split("RouterRetriever", 1)
    for answers_of in (sync, answers):
        assert "the billing team answers: 'How do I get my money back?'" in answers_of
        assert 'the tech_support team answers: "my password doesn\'t work anymore"' in answers_of
        assert "the general team answers: 'what time do you open on saturday'" in answers_of
        # Fits nothing: the selector falls back to the general engine.
        assert "the general team answers: 'what is the boiling point of mercury'" in answers_of
    assert "fell back to 'general'" in sync
    assert "Multi-selection: [\"'billing' scored" in answers and "'tech_support' scored" in answers
    assert "'How do I get my money back?' -> ['Refunds are paid" in retrieved
    assert "\"my password doesn't work anymore\" -> ['Reset your password" in retrieved
