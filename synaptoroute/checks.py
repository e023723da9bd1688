"""Input checks for what callers give: counts, seconds, score thresholds, and the
example utterances the integrations take per tool or choice name.

The core uses them for every count, timeout and threshold it takes, and so do the
LangChain and LlamaIndex integrations, so a value is accepted or refused the same way
(and with the same kind of message) wherever it is given: numpy's scalars count as
numbers, a float with no fraction counts as a whole number, and a bool is never a
number (Python counts ``True`` as the int 1). Each check raises
:class:`~synaptoroute.exceptions.InvalidInputError` naming the field.
"""

from __future__ import annotations

import difflib
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from .exceptions import InvalidInputError
from .models import SCORE_MAX, SCORE_MIN, clean_utterances

__all__ = [
    "MAX_INT_MS_SECONDS",
    "check_count",
    "check_int_ms_seconds",
    "check_seconds",
    "check_text",
    "check_threshold",
    "check_utterances",
    "is_number",
    "misspelt_key",
    "reads_nothing_of",
    "refuse_misspelt_key",
]


def reads_nothing_of(encoder: object) -> Callable[[str], bool]:
    """Whether ``encoder`` reads nothing of a text: its ``reads_nothing`` (the bundled
    :class:`~synaptoroute.encoder.Encoder`'s: only whitespace and characters its
    tokenizer deletes, a BOM, zero-width spaces, NUL...), or for an encoder without
    one, whether the text is whitespace only. The one test of an empty text: an empty
    query, a refused utterance or fit text, a description an integration skips, and
    an integration's ``utterances=`` refused at construction."""
    test = getattr(encoder, "reads_nothing", None)
    return test if callable(test) else _blank


def _blank(text: str) -> bool:
    return not text.strip()


def _empty_to_the_model(what: str, text: str) -> InvalidInputError:
    """The one refusal of a text :func:`reads_nothing_of` finds empty, naming ``what``
    it is (a route's utterance, a fit text, an integration's ``utterances=`` entry)."""
    return InvalidInputError(
        f"{what} ({text[:60]!r}) is empty to the model: it holds only whitespace and "
        "characters its tokenizer deletes (a BOM, zero-width spaces, NUL, control or "
        "format characters), so it would be embedded as the empty text"
    )


class RepeatedKeyError(ValueError):
    """A key twice in one JSON object (``json.loads`` lets the last one win)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook`` for files users write (routes files,
    labelled JSON lines): a repeated key is refused, not silently dropped.

    Raises:
        RepeatedKeyError: a key appears twice in one object.
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            msg = f"key {key!r} appears more than once in one object"
            raise RepeatedKeyError(msg)
        out[key] = value
    return out


def is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number, numpy's scalars included; a bool is not one
    (Python counts ``True`` as the int 1, but it is no threshold, timeout or margin)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_count(value: object, field: str, minimum: int) -> int:
    """``value`` as an int if it is a whole number (an int, numpy's included, or a
    float such as ``1e5`` with no fraction; not a bool) of at least ``minimum``; else
    :class:`~synaptoroute.exceptions.InvalidInputError` naming ``field``."""
    count: int | None = None
    if (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        is_number(value) and math.isfinite(value) and float(value).is_integer()
    ):
        count = int(value)
    if count is None or count < minimum:
        msg = f"{field} must be at least {minimum} (a whole number), got {value!r}"
        raise InvalidInputError(msg)
    return count


def check_seconds(value: object, field: str, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number of seconds, above 0 (or at least 0
    with ``zero``) and at most ``threading.TIMEOUT_MAX`` (the longest wait a lock or
    an event takes; past it they raise ``OverflowError``); else
    :class:`~synaptoroute.exceptions.InvalidInputError` naming ``field``."""
    try:
        seconds = float(value) if is_number(value) else math.nan
    except OverflowError:  # an int past a float's range
        seconds = math.inf
    if not 0 <= seconds <= threading.TIMEOUT_MAX or (seconds == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        msg = (
            f"{field} must be a finite number of seconds {bound} (at most "
            f"{threading.TIMEOUT_MAX:g}), got {value!r}"
        )
        raise InvalidInputError(msg)
    return seconds


#: The longest duration kept in a C int of milliseconds (SQLite's busy timeout,
#: PostgreSQL's and libpq's timeouts): 2,147,483 s, about 24.8 days.
MAX_INT_MS_SECONDS = (2**31 - 1) // 1000


def check_int_ms_seconds(value: object, field: str, owner: str, *, zero: bool = False) -> float:
    """:func:`check_seconds` for a duration ``owner`` keeps in a C int of milliseconds:
    at most :data:`MAX_INT_MS_SECONDS` (longer ones wrapped around, or were refused
    later in the owner's words); else :class:`InvalidInputError` naming ``field``."""
    try:
        seconds = check_seconds(value, field, zero=zero)
    except InvalidInputError:
        # Named by this owner's bound, not a lock's (9.2e9 s, 4,000 times too large).
        try:
            huge = is_number(value) and MAX_INT_MS_SECONDS < float(value) < math.inf
        except OverflowError:  # an int past a float's range
            huge = True
        if not huge:
            bound = ">= 0" if zero else "> 0"
            msg = (
                f"{field} must be a finite number of seconds {bound} (at most "
                f"{MAX_INT_MS_SECONDS}, {owner}'s limit), got {value!r}"
            )
            raise InvalidInputError(msg) from None
        seconds = math.inf
    if seconds > MAX_INT_MS_SECONDS:
        msg = (
            f"{field} must be at most {MAX_INT_MS_SECONDS} seconds ({owner}'s limit), got {value!r}"
        )
        raise InvalidInputError(msg)
    return seconds


def check_threshold(
    value: object, field: str, *, low: float = SCORE_MIN, high: float = SCORE_MAX
) -> float:
    """``value`` as a Python float if it is a score threshold: a number in ``[low,
    high]`` (by default a cosine similarity's range, [-1, 1]), numpy scalars included,
    not a bool and not NaN; else :class:`~synaptoroute.exceptions.InvalidInputError`
    naming ``field``."""
    if not is_number(value) or not low <= value <= high:
        msg = f"{field} must be a number in [{low}, {high}], got {value!r}"
        raise InvalidInputError(msg)
    return float(value)


def check_text(text: object) -> str:
    """Validate one query and return it unchanged.

    Raises:
        TypeError: ``text`` is not a ``str``.
        InvalidInputError: ``text`` is not valid Unicode (a lone surrogate such as
            ``"\\ud800"``): no tokenizer can take it. Checked for each caller's own
            texts before they join a batch, so one bad text never fails another's.
    """
    if not isinstance(text, str):
        msg = f"query must be str, got {type(text).__name__}"
        raise TypeError(msg)
    if not text.isascii():  # an ASCII text is valid Unicode: skip the copy
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            msg = "text must be valid Unicode (no lone surrogates)"
            raise InvalidInputError(msg) from None
    return text


def check_utterances(
    utterances: object,
    field: str = "utterances",
    reads_nothing: Callable[[str], bool] | None = None,
) -> dict[str, list[str]]:
    """``{name: [utterance, ...]}`` as routes will hold them (stripped, duplicates
    dropped), or :class:`~synaptoroute.exceptions.InvalidInputError` naming the key:
    not a mapping, a key that is no ``str``, one str (or a set, or anything else that
    is no sequence) instead of a list of them, an utterance that is no ``str``, blank
    (or one ``reads_nothing`` says the encoder reads nothing of:
    :func:`reads_nothing_of`), or not valid Unicode. ``None`` is ``{}``.

    The integrations check their ``utterances=`` with it when they are made: such a
    value would otherwise fail every later call that offers its tool, naming nothing.
    """
    if utterances is None:
        return {}
    if not isinstance(utterances, Mapping):
        kind = type(utterances).__name__
        msg = f"{field} must be a dict of {{name: [example, ...]}}, got {kind}"
        raise InvalidInputError(msg)
    out: dict[str, list[str]] = {}
    for name, texts in utterances.items():
        if not isinstance(name, str):
            msg = f"{field} must be keyed by tool name (a str), got the key {name!r}"
            raise InvalidInputError(msg)
        if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
            got = "one str" if isinstance(texts, str) else type(texts).__name__
            msg = f"{field}[{name!r}] must be a list of strings, got {got}"
            raise InvalidInputError(msg)
        texts = list(texts)
        for index, text in enumerate(texts):
            try:
                check_text(text)
            except TypeError:
                msg = f"{field}[{name!r}][{index}] must be a str, got {type(text).__name__}"
                raise InvalidInputError(msg) from None
            except InvalidInputError as exc:
                msg = f"{field}[{name!r}][{index}] ({text[:60]!r}): {exc}"
                raise InvalidInputError(msg) from None
            if not text.strip():
                msg = f"{field}[{name!r}][{index}] is empty after stripping whitespace"
                raise InvalidInputError(msg)
            if reads_nothing is not None and reads_nothing(text):
                raise _empty_to_the_model(f"{field}[{name!r}][{index}]", text)
        out[name] = clean_utterances(texts)
    return out


def misspelt_key(
    keys: Iterable[str], seen: Iterable[str], offered: Sequence[str]
) -> tuple[str, str] | None:
    """The first utterance key that looks like a misspelt name, with that name;
    ``None`` when none does.

    ``keys``: the names utterances are given for; ``seen``: every tool or choice name
    offered so far; ``offered``: the names offered now. A key naming nothing seen or
    offered may be meant for another agent's tools or another choice set, not yet
    seen: it is taken for a typo only when it is close to a name offered now that has
    no utterances of its own (the name it would have given utterances to).
    """
    given = set(keys)
    unknown = given.difference(seen, offered)
    bare = sorted(name for name in offered if name not in given)
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, bare, n=1)
        if close:
            return key, close[0]
    return None


def refuse_misspelt_key(
    keys: Iterable[str], seen: set[str], offered: Sequence[str], what: str
) -> None:
    """Record the names ``offered`` in ``seen`` (a refused call's names count as
    seen too), and refuse the first utterance key that looks like a misspelt one of
    them (:func:`misspelt_key`) with :class:`~synaptoroute.exceptions.InvalidInputError`;
    ``what`` names the kind of name ("tool", "choice"). The caller holds the lock that
    guards ``seen``.

    Only the names that are keys are recorded: no other is ever asked about, and a
    service offering per-user tool names would grow ``seen`` without end."""
    keys = set(keys)
    typo = misspelt_key(keys, seen, offered)
    seen.update(name for name in offered if name in keys)
    if typo is not None:
        key, close = typo
        msg = (
            f"utterances are given for {key!r}, which is not the name of any {what} "
            f"seen, while {what} {close!r} has no utterances: did you mean {close!r}? "
            f"({what}s: {sorted(offered)})"
        )
        raise InvalidInputError(msg)
