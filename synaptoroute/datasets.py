"""Labelled data in JSON lines: one ``{"text": ..., "label": ...}`` object per line.

``label`` is a route name, or ``null`` for a text that belongs to no route (out of
scope). :func:`load_jsonl` reads and validates a whole file before returning, so a
caller that writes only after it returns writes nothing when the file is malformed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .checks import RepeatedKeyError, unique_keys
from .encoder import check_text
from .exceptions import InvalidInputError
from .models import Route, control_character

__all__ = [
    "NONE",
    "DatasetError",
    "check_labelled",
    "label_indexes",
    "load_jsonl",
    "parse_jsonl",
    "routes_from_labelled",
]

#: Index of "no route" / "out of scope" in label and prediction arrays.
NONE = -1

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
    control = control_character(label.strip()) if isinstance(label, str) else None
    if control is not None:  # a label names a route, and no route name holds one
        return f"'label' holds a control character ({control!r}), which no route name may"
    # JSON escapes can spell lone surrogates ("\ud800"), which no tokenizer or store
    # takes: refused here, with the line, not later without it.
    for key, value in (("text", text), ("label", label)):
        if isinstance(value, str):
            try:
                check_text(value)
            except InvalidInputError:
                return f"'{key}' is not valid Unicode (a lone surrogate)"
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
    texts, labels, _ = _load_numbered(os.fspath(path))
    return texts, labels


def parse_jsonl(data: bytes | str, name: str = "<data>") -> tuple[list[str], list[str | None]]:
    """Labelled rows from JSON lines (an upload), checked like :func:`load_jsonl`.

    Args:
        data: the JSON lines, as UTF-8 bytes or as text.
        name: what error messages call the data.

    Raises:
        DatasetError: as :func:`load_jsonl`.
        TypeError: ``data`` is neither bytes nor text.
    """
    if isinstance(data, str):
        # A lone surrogate stays one, so its line is reported as not valid UTF-8.
        data = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        msg = f"parse_jsonl takes bytes or str, not {type(data).__name__}"
        raise TypeError(msg)
    return _parse_lines(data.splitlines(keepends=True), name)


def _load_numbered(path: str) -> tuple[list[str], list[str | None], list[int]]:
    """:func:`load_jsonl`, with each row's line number (from 1): the command line names
    a row by its line."""
    numbers: list[int] = []
    # Split as parse_jsonl splits an upload (\n, \r\n or a lone \r), so a file reads
    # the same from the command line and the console.
    texts, labels = _parse_lines(Path(path).read_bytes().splitlines(keepends=True), path, numbers)
    return texts, labels, numbers


def _parse_lines(
    lines: Iterable[bytes], name: str, numbers: list[int] | None = None
) -> tuple[list[str], list[str | None]]:
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
            # Without its line break: a line cut short was reported at "column 1" (of
            # the line after it, for the decoder).
            row = json.loads(line.rstrip("\r\n"), object_pairs_hook=unique_keys)
        except json.JSONDecodeError as exc:
            errors.append((number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except RepeatedKeyError as exc:  # the last value won, silently, before
            errors.append((number, str(exc)))
            continue
        except RecursionError:
            errors.append((number, "invalid JSON (nested too deeply)"))
            continue
        except ValueError:  # an integer past Python's digit limit (4,300 by default)
            errors.append((number, "invalid JSON (a number too long to read)"))
            continue
        checked = _check_row(row)
        if isinstance(checked, str):
            errors.append((number, checked))
            continue
        texts.append(checked[0])
        labels.append(checked[1])
        if numbers is not None:
            numbers.append(number)
    if errors:
        raise DatasetError(name, errors)
    if not texts:
        raise DatasetError(name, [], "the file holds no labelled rows")
    return texts, labels


# -- labelled rows in memory ------------------------------------------------------------
def label_indexes(
    labels: Sequence[str | None],
    names: Sequence[str],
    empty: Collection[str] = (),
    *,
    lines: Sequence[int] | None = None,
) -> NDArray[np.int64]:
    """Route index of each label (``NONE`` for ``None``).

    Args:
        labels: a route name or ``None`` per row.
        names: the routes a label may name, in index order.
        empty: routes of the router that are not among ``names`` because they hold
            no utterances (a label naming one is told so).
        lines: each row's line in the file it was read from, to name rows by in
            messages (else by their index).

    Raises:
        InvalidInputError: a label is not a string or ``None``, or names no route
            (or one without utterances).
    """
    position = {name: i for i, name in enumerate(names)}
    out = np.empty(len(labels), dtype=np.int64)
    unknown: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label is None:
            out[i] = NONE
        elif not isinstance(label, str):
            msg = f"label {i} must be a route name or None, got {type(label).__name__}"
            raise InvalidInputError(msg)
        elif label.strip() in position:  # stripped, as routes_from_labelled names routes
            out[i] = position[label.strip()]
        else:
            unknown.setdefault(label, i)
    hollow = {k: v for k, v in unknown.items() if k.strip() in empty}
    unknown = {k: v for k, v in unknown.items() if k not in hollow}
    problems = []
    if hollow:
        problems.append(
            f"{_some_labels(hollow, lines)} name a route with no utterances; a route is scored "
            "by its utterances, so add some to it first"
        )
    if unknown:
        problems.append(
            f"{_some_labels(unknown, lines)} name no route of this router; add those routes "
            "first (for example with routes_from_labelled or 'synaptoroute import')"
        )
    if problems:
        msg = "; ".join(problems) + ", or label such rows null (out of scope)"
        raise InvalidInputError(msg)
    return out


def _some_labels(found: dict[str, int], lines: Sequence[int] | None = None) -> str:
    """``found`` (label: first index) as a message shows it: at most five of them, each
    at its row's index, or its line where ``lines`` are given."""
    shown = ", ".join(
        f"{k!r} ({f'at index {v}' if lines is None else f'line {lines[v]}'})"
        for k, v in list(found.items())[:5]
    )
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return f"{len(found)} labels: {shown}{more}"


def check_labelled(texts: Sequence[str], labels: Sequence[str | None]) -> None:
    """Validate parallel texts and labels.

    Raises:
        InvalidInputError: texts or labels are not sequences (a generator), lengths
            differ, there are no rows, or a text is not a string.
    """
    if isinstance(texts, str):
        msg = "texts must be a list of strings, not a str"
        raise InvalidInputError(msg)
    for name, value in (("texts", texts), ("labels", labels)):
        # Read more than once (and by index): a generator would be used up by the first.
        if not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            msg = f"{name} must be a sequence such as a list, got {type(value).__name__}"
            raise InvalidInputError(msg)
    if len(texts) != len(labels):
        msg = f"texts and labels differ in length ({len(texts)} != {len(labels)})"
        raise InvalidInputError(msg)
    if len(texts) == 0:  # not "not texts": a numpy array has no truth value
        msg = "no labelled rows given"
        raise InvalidInputError(msg)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            msg = f"text {i} must be a string, got {type(text).__name__}"
            raise InvalidInputError(msg)


def routes_from_labelled(texts: Sequence[str], labels: Sequence[str | None]) -> list[Route]:
    """One route per distinct label, its utterances the texts with that label.

    Rows labelled ``None`` (out of scope) belong to no route and are skipped. Routes
    come in order of first appearance; duplicate texts are kept once.

    Raises:
        InvalidInputError: lengths differ, a text is not a non-empty string, or a
            label is not a string or ``None``.
    """
    check_labelled(texts, labels)
    grouped: dict[str, list[str]] = {}
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if label is None:
            continue
        if not isinstance(label, str) or not label.strip():
            msg = f"label {i} must be a non-empty route name or None, got {label!r}"
            raise InvalidInputError(msg)
        if not text.strip():
            msg = f"text {i} is empty"
            raise InvalidInputError(msg)
        grouped.setdefault(label.strip(), []).append(text)
    return [Route(name=name, utterances=utterances) for name, utterances in grouped.items()]
