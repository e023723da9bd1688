"""Labelled data in JSON lines: one ``{"text": ..., "label": ...}`` object per line.

``label`` is a route name, or ``null`` for a text that belongs to no route (out of
scope). :func:`load_jsonl` reads and validates a whole file before returning, so a
caller that writes only after it returns writes nothing when the file is malformed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .exceptions import InvalidInputError

__all__ = ["DatasetError", "load_jsonl", "parse_jsonl"]

#: Malformed lines listed in the message (all are in ``DatasetError.errors``).
_SHOWN = 10


class DatasetError(InvalidInputError):
    """A labelled file is malformed; ``errors`` lists ``(line number, problem)``.

    Line numbers start at 1. Nothing was read from the file into anything.
    """

    def __init__(
        self, path: str, errors: list[tuple[int, str]], message: str | None = None
    ) -> None:
        self.path = path
        self.errors = errors
        if message is not None:
            super().__init__(f"{path}: {message}")
            return
        shown = "; ".join(f"line {n}: {problem}" for n, problem in errors[:_SHOWN])
        more = f"; and {len(errors) - _SHOWN} more" if len(errors) > _SHOWN else ""
        noun = "line" if len(errors) == 1 else "lines"
        super().__init__(f"{path}: {len(errors)} malformed {noun}: {shown}{more}")


def _check_row(row: Any) -> tuple[str, str | None] | str:
    """The row's text and label, or a description of what is wrong with it."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "text" not in row:
        return "missing key 'text'"
    if "label" not in row:
        return "missing key 'label' (use null for a text that fits no route)"
    text, label = row["text"], row["label"]
    if not isinstance(text, str):
        return f"'text' must be a string, got {type(text).__name__}"
    if not text.strip():
        return "'text' is empty"
    if label is not None and not isinstance(label, str):
        return f"'label' must be a string or null, got {type(label).__name__}"
    if isinstance(label, str) and not label.strip():
        return "'label' is empty (use null for a text that fits no route)"
    return text, label.strip() if isinstance(label, str) else None


def load_jsonl(path: str | os.PathLike[str]) -> tuple[list[str], list[str | None]]:
    """Read labelled rows from a JSON-lines file.

    Blank lines are skipped; other keys in an object are ignored. Every line is
    checked before anything is returned.

    Returns:
        ``(texts, labels)``, in file order; a label is ``None`` for out of scope.

    Raises:
        DatasetError: a line is not valid UTF-8 or JSON, not an object, lacks
            ``text``/``label``, or has a value of the wrong type; or the file has no
            rows. The message names each bad line's number (an ``InvalidInputError``).
        OSError: the file cannot be read.
    """
    name = os.fspath(path)
    with Path(name).open("rb") as fh:
        return _parse_lines(fh, name)


def parse_jsonl(data: bytes, name: str = "<data>") -> tuple[list[str], list[str | None]]:
    """Labelled rows from JSON-lines bytes (an upload), checked like :func:`load_jsonl`.

    Args:
        data: the JSON lines, UTF-8.
        name: what error messages call the data.

    Raises:
        DatasetError: as :func:`load_jsonl`.
    """
    return _parse_lines(data.splitlines(keepends=True), name)


def _parse_lines(lines: Iterable[bytes], name: str) -> tuple[list[str], list[str | None]]:
    texts: list[str] = []
    labels: list[str | None] = []
    errors: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append((number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append((number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        checked = _check_row(row)
        if isinstance(checked, str):
            errors.append((number, checked))
            continue
        texts.append(checked[0])
        labels.append(checked[1])
    if errors:
        raise DatasetError(name, errors)
    if not texts:
        raise DatasetError(name, [], "the file holds no labelled rows")
    return texts, labels
