"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..models import SCORE_MAX, SCORE_MIN, MatchReason, Route, RouteMatch, clean_utterances
from ..storage import metadata_json

__all__ = [
    "MAX_BATCH_QUERIES",
    "NAME_PATTERN",
    "BatchRequest",
    "BatchResponse",
    "DefaultThreshold",
    "ErrorBody",
    "NewRoute",
    "QueryRequest",
    "RouteBody",
    "RouteOut",
    "RouteResult",
    "ThresholdBody",
    "UtteranceChange",
    "UtterancesAdded",
    "UtterancesDeleted",
]

#: Most queries one ``POST /route/batch`` may carry.
MAX_BATCH_QUERIES = 1024


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); the tokenizer and SQLite cannot, and
    # one such text would fail the whole micro-batch it joins. Refuse it here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        msg = "text must be valid Unicode (no lone surrogates)"
        raise ValueError(msg) from None
    return value


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    # What the store would refuse (lone surrogates, NaN, too deep, too large) is a
    # 422 here, before anything is encoded or written.
    metadata_json(value)
    return value


#: A string that can be tokenised and stored.
Text = Annotated[str, AfterValidator(_encodable)]
# What str.strip() removes, spelled out: regex engines (ECMA-262 in the schema,
# Rust in pydantic, Python in clients) disagree on what \s covers.
_WS = (
    "\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
# Control characters (Unicode category Cc), which no route name may hold.
_CC = "\\u0000-\\u001f\\u007f-\\u009f"
#: Non-empty, no leading or trailing whitespace, no control character.
NAME_PATTERN = f"^[^{_WS}{_CC}]([^{_CC}]*[^{_WS}{_CC}])?$"
#: A route name: what :class:`~synaptoroute.Route` keeps after stripping.
Name = Annotated[str, Field(pattern=NAME_PATTERN), AfterValidator(_encodable)]
#: An example utterance: at least one character that is not whitespace (one the
#: model reads nothing of, such as only zero-width characters, is refused by the
#: router with 422: no portable pattern says which characters a tokenizer deletes).
Utterance = Annotated[str, Field(pattern=f"[^{_WS}]"), AfterValidator(_encodable)]
#: Utterances as the library keeps them: stripped, none blank, duplicates dropped.
Utterances = Annotated[list[Utterance], AfterValidator(clean_utterances)]
# Strict: JSON true/false or "0.5" is not a score.
Score = Annotated[float, Field(ge=SCORE_MIN, le=SCORE_MAX, allow_inf_nan=False, strict=True)]


class QueryRequest(BaseModel):
    """``POST /route``: one text (0.1.0's request shape)."""

    query: Text = Field(description="The text to route. Empty gives no route.")


class BatchRequest(BaseModel):
    """``POST /route/batch``: several texts, answered in order."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Text] = Field(max_length=MAX_BATCH_QUERIES)


class RouteResult(BaseModel):
    """Where one text went; ``route`` is ``null`` when nothing passed its threshold."""

    route: str | None
    score: float
    runner_up: str | None = None
    runner_up_score: float | None = None
    candidate: str | None = None
    threshold: float | None = None
    reason: MatchReason
    confidence: float | None = None
    nearest_utterance: str | None = None

    @classmethod
    def from_match(cls, match: RouteMatch) -> RouteResult:
        """Convert the library's result (already valid: no second validation)."""
        return cls.model_construct(
            route=match.name,
            score=match.score,
            runner_up=match.runner_up,
            runner_up_score=match.runner_up_score,
            candidate=match.candidate,
            threshold=match.threshold,
            reason=match.reason,
            confidence=match.confidence,
            nearest_utterance=match.nearest_utterance,
        )


class BatchResponse(BaseModel):
    """``POST /route/batch``'s answer: one result per query, in order."""

    results: list[RouteResult]


class RouteBody(BaseModel):
    """A route's content; the name comes from the URL."""

    model_config = ConfigDict(extra="forbid")

    utterances: Utterances = Field(default_factory=list)
    description: Text | None = None
    threshold: Score | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_json_object)] = Field(default_factory=dict)

    def to_route(self, name: str) -> Route:
        """The library's :class:`Route` under ``name``."""
        return Route(
            name=name,
            utterances=self.utterances,
            description=self.description,
            threshold=self.threshold,
            metadata=self.metadata,
        )


class NewRoute(RouteBody):
    """A route to create, name included."""

    name: Name


class RouteOut(BaseModel):
    """A stored route."""

    name: str
    utterances: list[str]
    description: str | None = None
    threshold: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_route(cls, route: Route) -> RouteOut:
        """Convert the library's route."""
        return cls(
            name=route.name,
            utterances=list(route.utterances),
            description=route.description,
            threshold=route.threshold,
            metadata=dict(route.metadata),
        )


class UtteranceChange(BaseModel):
    """Utterances to add to or delete from a route."""

    model_config = ConfigDict(extra="forbid")

    utterances: Utterances = Field(min_length=1)


class UtterancesAdded(BaseModel):
    """The utterances that were new (the others were already there)."""

    added: list[str]


class UtterancesDeleted(BaseModel):
    """How many utterances were removed."""

    deleted: int


class ThresholdBody(BaseModel):
    """A route's own threshold; ``null`` falls back to the router's default."""

    model_config = ConfigDict(extra="forbid")

    threshold: Score | None


class DefaultThreshold(BaseModel):
    """The router's default threshold."""

    model_config = ConfigDict(extra="forbid")

    threshold: Score


class ErrorBody(BaseModel):
    """Every error's body (but the probes': :class:`Readiness`, :class:`StoreHealth`)."""

    detail: Any


class ReadinessChecks(BaseModel):
    """What ``/readyz`` checked."""

    started: bool
    model: bool
    worker: bool


class Readiness(BaseModel):
    """``/readyz``'s body, 200 (``ready``) or 503 (``not ready``) alike."""

    status: Literal["ready", "not ready"]
    checks: ReadinessChecks


class StoreHealth(BaseModel):
    """``/healthz/store``'s body, 200 (``ok``) or 503 (``unavailable``) alike."""

    store: Literal["ok", "unavailable"]
