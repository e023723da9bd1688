"""Pydantic types: a :class:`Route` and the one result type, :class:`RouteMatch`."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, field_validator

from .exceptions import InvalidInputError

__all__ = ["NEGATIVES_ROUTE", "MatchReason", "Route", "RouteMatch"]

#: Why a :class:`RouteMatch` came out as it did.
MatchReason = Literal[
    "matched",  # the best route passed its threshold (and the margin, if set)
    "below_threshold",  # the best route scored under its threshold
    "ambiguous",  # top-1 minus top-2 was under ``min_margin``
    "empty_query",  # the query was empty or whitespace only; the model was not called
    "no_routes",  # the router holds no routes
    "rejected_by_head",  # a fitted head placed the query out of scope
    "negative_example",  # a negative example (add_negatives) was nearer than every route
]

#: The reserved route that holds the negative examples (texts that must route nowhere).
#: It is stored like a route, so every storage back end and replica keeps it, but it is
#: never returned as a match and is hidden from the route listings.
NEGATIVES_ROUTE = "__negatives__"

SCORE_MIN = -1.0
SCORE_MAX = 1.0


def _a_number(value: object) -> object:
    # pydantic reads True, numpy's True and "0.5" as numbers; the router's own setters
    # refuse them (is_number), so a route must too.
    from .checks import is_number  # checks reads this module's score bounds

    if value is not None and not is_number(value):
        msg = f"a threshold must be a number (not a bool or a string), got {value!r}"
        raise ValueError(msg)
    return value


#: A model field holding a score threshold: a number in [SCORE_MIN, SCORE_MAX] (numpy
#: scalars read as floats), never a bool, or None.
OptionalThreshold = Annotated[
    Annotated[float, Field(ge=SCORE_MIN, le=SCORE_MAX, allow_inf_nan=False)] | None,
    BeforeValidator(_a_number),
]


class Route(BaseModel):
    """A named destination and the example utterances that describe it.

    Example:
        >>> Route(name="billing", utterances=["I need a refund", " I need a refund "]).utterances
        ['I need a refund']
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Strict: pydantic's lax mode took bytes as their UTF-8 text (a YAML ``!!binary``
    # utterance was stored decoded), where every other non-text is refused.
    name: StrictStr
    utterances: list[StrictStr] = Field(default_factory=list)
    description: StrictStr | None = None
    threshold: OptionalThreshold = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            msg = "route name must be non-empty after stripping whitespace"
            raise ValueError(msg)
        # A tab or a line break inside split the CLI's tab-separated lines, and no
        # control character can be typed or shown where names are listed.
        control = control_character(value)
        if control is not None:
            msg = f"route name {value!r} holds a control character ({control!r})"
            raise ValueError(msg)
        return value

    @field_validator("utterances")
    @classmethod
    def _clean_utterances(cls, values: list[str]) -> list[str]:
        return clean_utterances(values)

    @field_validator("metadata")
    @classmethod
    def _as_stored(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Tuples as the lists a store reads back (JSON): a route given a tuple was
        # not equal to itself reopened, so rerunning add_routes raised RouteExistsError.
        return cast(dict[str, Any], _lists_for_tuples(value))


#: Levels route metadata may nest: the stores refuse more (``InvalidInputError``).
MAX_METADATA_DEPTH = 32
#: Largest serialised metadata of one route (UTF-8 bytes): the stores refuse more.
MAX_METADATA_BYTES = 64 * 1024


def _lists_for_tuples(value: Any) -> Any:
    """A copy of ``value`` with every tuple inside it a list, as a store reads it back.
    Metadata the stores refuse for its shape (:func:`metadata_shape_problem`) is
    returned as it is, for them to name why: a walk of it could take time by its paths
    (a structure sharing its parts). A copy, never a shared container: equal tuples may
    be one object."""
    if metadata_shape_problem(value) is not None:
        return value
    return _copied(value)


def metadata_shape_problem(metadata: Any) -> str | None:
    """Why the stores refuse ``metadata`` for its shape, or ``None``: it nests deeper
    than :data:`MAX_METADATA_DEPTH` levels, holds more values than
    :data:`MAX_METADATA_BYTES` of JSON can (each takes a byte at least, so this is told
    after at most that many steps, before a walk of a structure sharing its parts takes
    time by its paths), or has a key that is not a ``str`` (JSON would turn ``1``,
    ``None`` or ``True`` into a string, and ``1`` and ``"1"`` into one key: the route
    read back would differ)."""
    stack: list[tuple[object, int]] = [(metadata, 0)]
    values = 0
    while stack:  # iterative: a deep document cannot exhaust the interpreter stack
        item, level = stack.pop()
        values += 1
        if values > MAX_METADATA_BYTES:
            return f"metadata holds more values than {MAX_METADATA_BYTES} bytes of JSON can"
        if isinstance(item, dict | list | tuple):
            level += 1
            if level > MAX_METADATA_DEPTH:
                return f"metadata nests deeper than {MAX_METADATA_DEPTH} levels"
            if isinstance(item, dict):
                keys = [k for k in item if not isinstance(k, str)]
                if keys:
                    return f"metadata keys must be strings, got {keys[0]!r}"
                stack.extend((child, level) for child in item.values())
            else:
                stack.extend((child, level) for child in item)
    return None


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copied(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_copied(inner) for inner in value]
    return value


#: Control characters, and the line and paragraph separators (U+2028, U+2029), which
#: ``str.splitlines``, YAML and JavaScript read as line breaks.
_NOT_IN_NAMES = frozenset({"Cc", "Zl", "Zp"})


def control_character(name: str) -> str | None:
    """The first control character or line separator of ``name``, which no route name
    may hold (``None`` if it holds none)."""
    return next((c for c in name if unicodedata.category(c) in _NOT_IN_NAMES), None)


def utterance_key(text: str) -> str:
    """What makes two utterances the same one: their NFC form. The model and the
    lexical features read a decomposed text (``e`` + U+0301, as macOS and some
    keyboards type it) as the composed one, so a copy in the other form added
    nothing but a row, and survived a delete of the form the user could see."""
    return unicodedata.normalize("NFC", text)


def clean_utterances(values: list[str]) -> list[str]:
    """Strip each utterance and drop duplicates, forms equal under NFC included
    (:func:`utterance_key`; the first occurrence is kept as it was written).

    Raises:
        InvalidInputError: an utterance is not a string or is blank (a ``ValueError``,
            so a :class:`Route` field validator turns it into pydantic's
            ``ValidationError``).
    """
    seen: dict[str, str] = {}
    for i, value in enumerate(values):
        if not isinstance(value, str):
            msg = f"utterance {i} must be a string, got {type(value).__name__}"
            raise InvalidInputError(msg)
        stripped = value.strip()
        if not stripped:
            msg = f"utterance {i} is empty after stripping whitespace"
            raise InvalidInputError(msg)
        seen.setdefault(utterance_key(stripped), stripped)
    return list(seen.values())


class RouteMatch(BaseModel):
    """The outcome of one query: the chosen route, or ``name=None`` for no route.

    ``candidate`` is the best-scoring route whether or not it passed, so a
    rejection can be explained: ``score`` fell under ``threshold``, or the gap to
    ``runner_up`` was under the margin (``reason`` says which).
    """

    model_config = ConfigDict(frozen=True)

    name: str | None
    score: float
    candidate: str | None = None
    threshold: float | None = None
    runner_up: str | None = None
    runner_up_score: float | None = None
    reason: MatchReason = "matched"
    confidence: float | None = None
    nearest_utterance: str | None = None

    @property
    def matched(self) -> bool:
        """Whether a route was chosen."""
        return self.name is not None

    @property
    def margin(self) -> float | None:
        """Score gap between the candidate and the runner-up."""
        if self.runner_up_score is None:
            return None
        return self.score - self.runner_up_score
