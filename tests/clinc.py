"""A helper the tests on the CLINC150 fixture slices share (conftest.py and test modules)."""

from __future__ import annotations

Rows = list[dict[str, str | None]]


def split(rows: Rows) -> tuple[list[str], list[str | None]]:
    """The texts and the labels of fixture rows."""
    return [str(r["text"]) for r in rows], [r["label"] for r in rows]
