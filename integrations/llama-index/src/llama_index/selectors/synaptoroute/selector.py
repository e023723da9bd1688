"""``SynaptorouteSelector``: a LlamaIndex selector that routes by example utterances.

Each choice (a tool's ``ToolMetadata``) becomes a synaptoroute route whose texts are
the choice's description, its name written as a phrase, and any example utterances
given for that name. One :class:`synaptoroute.AdaptiveRouter` is built per choice
set and cached, so a selection costs one query embedding, never a re-embedding of
the choices. Sync and async selections rank the choices the same way and share one
pure decision function, :func:`decide_selection`; each dispatches LlamaIndex's
embedding events for its query (see ``observability.py``).

Why one module over 400 lines: the selector's cache of choice sets (their routers, the
batching workers still running on evicted ones, the names seen and warned about), the
checks that build a choice set's routes, and sync and async selection share that cache,
its two locks and the choice-set key; split apart, each part would reach into the
others' private state.
"""

from __future__ import annotations

import copy
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import FrameType, MappingProxyType
from typing import Any, Literal

from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata
from typing_extensions import override

from synaptoroute import (
    EncoderProtocol,
    InvalidInputError,
    NoRouteMatchedError,
    Route,
    RouteMatch,
)
from synaptoroute.checks import (
    check_count,
    check_threshold,
    check_utterances,
    reads_nothing_of,
    refuse_misspelt_key,
)
from synaptoroute.forking import APP, APP_CACHE, hold_across_fork
from synaptoroute.router import DEFAULT_THRESHOLD, RouterCache, counted_build

from .embeddings import SynaptorouteEmbedding, as_encoder
from .observability import (
    QueryEmbeddingCall,
    QueryEmbeddingEvents,
    SelectionRouter,
    query_embedding_events,
)

__all__ = [
    "ChoiceKey",
    "NoMatchPolicy",
    "SelectionPolicy",
    "SynaptorouteSelector",
    "decide_selection",
]

#: What to select when no choice reaches the threshold.
NoMatchPolicy = Literal["fallback", "best", "raise"]
_NO_MATCH_POLICIES: tuple[str, ...] = ("fallback", "best", "raise")

#: Choices with fewer example utterances than this get a warning (once per choice).
_FEW_EXAMPLES = 3

#: Identifies a choice set: the (name, description) of every choice, in order.
ChoiceKey = tuple[tuple[str | None, str], ...]


@dataclass(frozen=True)
class SelectionPolicy:
    """How ranked choices become a selection.

    Attributes:
        top_n: most choices selected; all that reach the threshold, best first.
        on_no_match: ``"best"`` selects the best-scoring choice anyway,
            ``"fallback"`` selects the choice named ``fallback``, ``"raise"``
            raises :class:`synaptoroute.NoRouteMatchedError`.
        fallback: the choice name used by ``on_no_match="fallback"``.
    """

    top_n: int = 1
    on_no_match: NoMatchPolicy = "best"
    fallback: str | None = None

    def __post_init__(self) -> None:
        # Frozen: the checked count (numpy's ints become ints) is set as the dataclass does.
        object.__setattr__(self, "top_n", check_count(self.top_n, "top_n", 1))
        if self.on_no_match not in _NO_MATCH_POLICIES:
            msg = f"on_no_match must be one of {_NO_MATCH_POLICIES}, got {self.on_no_match!r}"
            raise InvalidInputError(msg)
        if self.on_no_match == "fallback" and not self.fallback:
            msg = "on_no_match='fallback' needs fallback=<the name of a choice>"
            raise InvalidInputError(msg)
        # Else ignored: a query that matched nothing would go to the best choice, not
        # to the one named.
        if self.fallback is not None and self.on_no_match != "fallback":
            msg = (
                f"fallback={self.fallback!r} is used only with on_no_match='fallback' "
                f"(got on_no_match={self.on_no_match!r}); pass both"
            )
            raise InvalidInputError(msg)


_MAX_WARNED = 4096  # names warned about that are remembered (see _check_choices)
_UNNAMED = "<choices without a name>"  # the one warning about them (see _check_choices)


def _sides(score: float, threshold: float | None) -> tuple[str, str]:
    """A score and its threshold, with the digits that show which side the score is on.

    Three decimals, more where both would print alike: "scored 0.809 (threshold
    0.809)" read as a pass whichever way it went.
    """
    if threshold is None:
        return f"{score:.3f}", "none"
    for digits in range(3, 17):
        sides = f"{score:.{digits}f}", f"{threshold:.{digits}f}"
        if sides[0] != sides[1] or score == threshold:
            return sides
    return repr(score), repr(threshold)


def _label(choices: Sequence[ToolMetadata], index: int) -> str:
    name = choices[index].name
    if not name:
        return f"choice {index}"
    return f"{name!r} (choice {index})" if name in _shared_names(choices) else repr(name)


def _shared_names(choices: Sequence[ToolMetadata]) -> set[str]:
    """Names more than one choice has (``QueryEngineTool.from_defaults`` names every
    tool ``query_engine_tool`` unless told otherwise)."""
    return {n for n, count in Counter(c.name for c in choices if c.name).items() if count > 1}


def _check_fields(choices: Sequence[ToolMetadata]) -> None:
    """Refuse a choice whose name or description is not text (``ToolMetadata`` does
    not check): it failed deep inside, differently in select and aselect."""
    for index, choice in enumerate(choices):
        name, description = getattr(choice, "name", None), getattr(choice, "description", None)
        if not isinstance(description, str) or not (name is None or isinstance(name, str)):
            msg = (
                f"choice {index}: a choice's description must be a str and its name a str "
                f"or None, got description {type(description).__name__} and name "
                f"{type(name).__name__}"
            )
            raise InvalidInputError(msg)


def _index(match: RouteMatch) -> int:
    # query_top_k names each element after its route, and routes are named by position.
    return int(match.name if match.name is not None else match.candidate or 0)


def _fallback_index(choices: Sequence[ToolMetadata], name: str) -> int:
    for index, choice in enumerate(choices):
        if choice.name == name:
            return index
    names = [c.name for c in choices if c.name]
    msg = f"fallback choice {name!r} is not among the choices; their names are {names}"
    raise InvalidInputError(msg)


def decide_selection(
    ranked: Sequence[RouteMatch],
    choices: Sequence[ToolMetadata],
    policy: SelectionPolicy,
    query: str,
) -> SelectorResult:
    """Turn a query's ranked choices into a ``SelectorResult`` (pure; sync and async share it).

    Args:
        ranked: the best ``policy.top_n`` routes, best first, as
            :meth:`synaptoroute.AdaptiveRouter.query_top_k` returns them; each
            route is named by its choice's index.
        choices: the choices, in the order the caller gave them.
        policy: top-n and the no-match policy.
        query: the query text, for messages.

    Raises:
        NoRouteMatchedError: nothing reached the threshold and ``on_no_match`` is
            ``"raise"``.
        InvalidInputError: the fallback name is not among the choices.
    """
    passed = [m for m in ranked if m.reason == "matched"][: policy.top_n]
    if passed:
        return SelectorResult(
            selections=[
                SingleSelection(
                    index=_index(m),
                    reason=(
                        "{} scored {} (threshold {}); nearest example: {!r}".format(
                            _label(choices, _index(m)),
                            *_sides(m.score, m.threshold),
                            m.nearest_utterance,
                        )
                    ),
                )
                for m in passed
            ]
        )
    best = ranked[0] if ranked else None
    if best is None:
        why = "the query is empty, so no choice was scored"
    else:
        score, threshold = _sides(best.score, best.threshold)
        why = (
            f"no choice reached the threshold {threshold}; the best was "
            f"{_label(choices, _index(best))} with score {score}"
        )
    if policy.on_no_match == "raise":
        msg = (
            f"{why} (query: {query[:200]!r}). Add example utterances for the intended "
            "choice, lower the threshold, or use on_no_match='best' or 'fallback'"
        )
        raise NoRouteMatchedError(msg)
    if policy.on_no_match == "fallback":
        assert policy.fallback is not None
        index = _fallback_index(choices, policy.fallback)
        reason = f"{why}; fell back to {policy.fallback!r}"
    else:
        # With nothing scored (an empty query) "best" has no best; the first choice
        # keeps the caller's promise that something is selected.
        index = _index(best) if best is not None else 0
        reason = f"{why}; selected {_label(choices, index)} as the best available"
    return SelectorResult(selections=[SingleSelection(index=index, reason=reason)])


def _in_llama_index(frame: FrameType) -> bool:
    # LlamaIndex's frames (the selector's callers, this package, the instrumentation
    # wrapper around _select), by module: the same whatever the install layout.
    top = str(frame.f_globals.get("__name__", "")).partition(".")[0]
    return top == "llama_index" or top.startswith("llama_index_")


def _warn_user(message: str) -> None:
    """Issue a ``UserWarning`` attributed to the first caller outside LlamaIndex.

    The number of LlamaIndex frames between that caller and this package varies
    (``select``, a query engine, the instrumentation wrapper), so it is counted.
    """
    frame = sys._getframe(1)
    level = 2  # 1 is this function; 2 its caller
    while frame.f_back is not None and _in_llama_index(frame):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _frozen(utterances: Mapping[str, Sequence[str]]) -> Mapping[str, Sequence[str]]:
    """A read-only copy: changed in place, the utterances reached only choice sets
    built afterwards. They are changed by assigning them."""
    return MappingProxyType({name: tuple(texts) for name, texts in utterances.items()})


def _checked_threshold(value: object) -> float | None:
    # A cosine similarity: the core's check (numpy scalars in, bools and NaN out).
    return None if value is None else check_threshold(value, "threshold")


#: A selector's cache and its guards (:meth:`SynaptorouteSelector._start_cache`).
_CACHE_STATE = frozenset({"_cache", "_warned", "_seen_names", "_lock", "_build_lock"})


def _rebuilt(cls: type[SynaptorouteSelector], settings: dict[str, Any]) -> SynaptorouteSelector:
    # A copy: the settings as they were, a cache of its own.
    selector = cls.__new__(cls)
    selector.__dict__.update(settings)
    selector._start_cache()
    return selector


def _unpickled(cls: type[SynaptorouteSelector], settings: dict[str, Any]) -> SynaptorouteSelector:
    # A selector pickled before its queries dispatched embedding events gets them too.
    settings.setdefault("_embedding_events", QueryEmbeddingEvents.of(settings["encoder"]))
    return _rebuilt(cls, {**settings, "_utterances": _frozen(settings["_utterances"])})


def _phrase(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split())


class SynaptorouteSelector(BaseSelector):
    """Select query engines or retrievers by similarity to example utterances.

    A drop-in selector for ``RouterQueryEngine`` and ``RouterRetriever``: no LLM
    call, one local embedding per query. Each choice is represented by its
    description, its name as a phrase (``"billing_engine"`` -> ``"billing engine"``)
    and the example utterances given for its name; a choice's score is its best
    cosine similarity to the query.

    Args:
        encoder: the synaptoroute encoder used for choices and queries.
        utterances: example utterances per choice (tool) name; one selector may
            serve engines with different tools, so a name may be for any of their
            choice sets. A name that looks like a misspelling of a choice without
            utterances (no choice set seen has that name, and it is close to the
            choice's) raises :class:`synaptoroute.InvalidInputError` naming it, and
            so do tools sharing a name; a choice with fewer than 3 utterances gets a
            warning, once. A value that is not a list of valid strings is refused here.
        threshold: minimum score for a choice to be selected; ``None`` keeps
            the router's default (0.5).
        top_n: most choices selected: every choice reaching the threshold, best
            first, up to ``top_n``. Above 1, ``RouterQueryEngine`` queries each
            selected engine and summarises their answers with its LLM.
        on_no_match: when nothing reaches the threshold: ``"best"`` selects the
            best-scoring choice anyway, ``"fallback"`` the choice named
            ``fallback``, ``"raise"`` raises :class:`synaptoroute.NoRouteMatchedError`.
        fallback: the choice name for ``on_no_match="fallback"`` (given with any other
            ``on_no_match``, it raises :class:`synaptoroute.InvalidInputError`); a
            choice set without a choice of that name raises it at its first selection.
        max_choice_sets: how many choice sets keep their embedded routes (least
            recently used dropped first; a dropped set is embedded again if it returns).

    ``threshold`` and ``utterances`` may be assigned later, checked as here: every
    choice set's next selection uses the new value (a new threshold applies to the
    cached routers; new utterances drop them, so each set is embedded again). The
    encoder is fixed at construction.

    Example:
        >>> from llama_index.core.query_engine import RouterQueryEngine
        >>> selector = SynaptorouteSelector.from_defaults(
        ...     utterances={"billing": ["I need a refund", "Where is my invoice?"]},
        ...     on_no_match="fallback",
        ...     fallback="general",
        ... )
        >>> engine = RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=llm)
        >>> engine.query("How do I get my money back?").metadata["selector_result"].ind
        0
    """

    def __init__(
        self,
        encoder: EncoderProtocol,
        *,
        utterances: Mapping[str, Sequence[str]] | None = None,
        threshold: float | None = None,
        top_n: int = 1,
        on_no_match: NoMatchPolicy = "best",
        fallback: str | None = None,
        max_choice_sets: int = 16,
    ) -> None:
        self.encoder = encoder
        self._utterances = _frozen(
            check_utterances(utterances, reads_nothing=reads_nothing_of(encoder))
        )
        self._threshold = _checked_threshold(threshold)
        self.policy = SelectionPolicy(top_n=top_n, on_no_match=on_no_match, fallback=fallback)
        self.max_choice_sets = check_count(max_choice_sets, "max_choice_sets", 1)
        # LlamaIndex's embedding events of each query (see observability.py).
        self._embedding_events = QueryEmbeddingEvents.of(encoder)
        self._start_cache()

    def _start_cache(self) -> None:
        # The routers built per choice set and what guards them: a selector's own,
        # never shared with a copy.
        self._lock, self._build_lock = threading.Lock(), threading.Lock()
        # The aselect calls under way on each router are counted: the last one out of
        # an evicted router stops its worker (a thread); aclose() stops the rest.
        self._cache: RouterCache[ChoiceKey, SelectionRouter] = RouterCache(
            self._lock, self._build_lock
        )
        self._warned: set[str] = set()
        self._seen_names: set[str] = set()
        # A fork waits for both (the core's locks, same repository), the build lock
        # first: it is held while a router is made, and the cache lock is taken under it.
        hold_across_fork(self, APP, lock="_build_lock")
        hold_across_fork(self, APP_CACHE)

    def _settings(self) -> dict[str, Any]:
        # Every attribute but the cache (a subclass's own included).
        return {k: v for k, v in self.__dict__.items() if k not in _CACHE_STATE}

    def __copy__(self) -> SynaptorouteSelector:
        """A selector with the same encoder and settings and a cache of its own (a
        copy that shared the cache changed the original's answers with its threshold)."""
        return _rebuilt(type(self), self._settings())

    def __deepcopy__(self, memo: dict[int, Any]) -> SynaptorouteSelector:
        """As :func:`copy.copy`, the other attributes deep-copied: the encoder (a loaded
        model), the utterances (read-only) and where the embedding events go (an
        embedding's callback handlers) are shared."""
        shared = {"encoder", "_utterances", "_embedding_events"}
        settings = {
            k: v if k in shared else copy.deepcopy(v, memo) for k, v in self._settings().items()
        }
        return _rebuilt(type(self), settings)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its encoder and settings; the choice sets are embedded again."""
        settings = self._settings()
        settings["_utterances"] = dict(settings["_utterances"])  # a mappingproxy does not pickle
        return (_unpickled, (type(self), settings))

    @classmethod
    def from_defaults(
        cls,
        utterances: Mapping[str, Sequence[str]] | None = None,
        threshold: float | None = None,
        top_n: int = 1,
        on_no_match: NoMatchPolicy = "best",
        encoder: EncoderProtocol | BaseEmbedding | Any | None = None,
        *,
        fallback: str | None = None,
        max_choice_sets: int = 16,
    ) -> SynaptorouteSelector:
        """Build a selector; ``encoder`` may be a synaptoroute encoder or any embedding model.

        With ``encoder=None`` the bundled offline model is used, loaded once per
        process and shared. A
        :class:`~llama_index.selectors.synaptoroute.SynaptorouteEmbedding` (or the
        LangChain package's ``SynaptorouteEmbeddings``) shares its encoder with the
        selector; any LlamaIndex ``BaseEmbedding`` or LangChain ``Embeddings`` is
        wrapped. A query's embedding dispatches LlamaIndex's embedding events (as
        ``get_query_embedding`` does): a ``SynaptorouteEmbedding``'s go to its
        ``callback_manager``; otherwise to ``Settings.callback_manager``.
        """
        selector = cls(
            as_encoder(encoder),
            utterances=utterances,
            threshold=threshold,
            top_n=top_n,
            on_no_match=on_no_match,
            fallback=fallback,
            max_choice_sets=max_choice_sets,
        )
        if isinstance(encoder, SynaptorouteEmbedding):
            # Its encoder routes; the embedding names the events and takes them.
            selector._embedding_events = QueryEmbeddingEvents(encoder)
        return selector

    # -- settings that cached routers depend on ------------------------------------
    @property
    def threshold(self) -> float | None:
        """Minimum score for a choice to be selected (``None``: the router's default,
        0.5). Assigned, it is checked as at construction and applies to every cached
        choice set's next selection."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        value = _checked_threshold(value)
        # Under the build lock: a router being built reads the threshold under it.
        with self._build_lock:
            with self._lock:
                self._threshold = value
            routers = self._cache.routers()  # builds and evictions wait for the build lock
            # Router calls stay outside the cache lock (see forking.APP_CACHE). A router
            # evicted meanwhile, still finishing an aselect, keeps the old one.
            for router in routers:
                router.threshold = self.effective_threshold

    @property
    def effective_threshold(self) -> float:
        """The threshold its choice sets' routers take: :attr:`threshold`, else the
        router's default (0.5)."""
        return DEFAULT_THRESHOLD if self._threshold is None else self._threshold

    @classmethod
    def given_or_made(
        cls,
        selector: SynaptorouteSelector | None,
        *,
        encoder: EncoderProtocol | BaseEmbedding | Any | None,
        utterances: Mapping[str, Sequence[str]] | None,
    ) -> SynaptorouteSelector:
        """``selector``, or one made from ``encoder`` and ``utterances``
        (:meth:`from_defaults`): for the classes that rank with a selector
        (``SynaptorouteToolRetriever``, ``SynaptorouteAgentWorkflow``).

        Raises:
            InvalidInputError: ``selector`` is given with ``encoder`` or ``utterances``
                (it has its own), or is no ``SynaptorouteSelector``.
        """
        if selector is None:
            return cls.from_defaults(utterances=utterances, encoder=encoder)
        if encoder is not None or utterances is not None:
            msg = (
                "pass selector= or encoder=/utterances=, not both (the selector has its "
                "encoder and utterances)"
            )
            raise InvalidInputError(msg)
        if not isinstance(selector, SynaptorouteSelector):
            msg = f"selector must be a SynaptorouteSelector, got {type(selector).__name__}"
            raise InvalidInputError(msg)
        return selector

    @property
    def utterances(self) -> dict[str, list[str]]:
        """Example utterances per choice name, as checked (stripped, duplicates
        dropped): a copy, as 0.2 gave a dict of lists. Assign a new mapping (checked as
        at construction) to change them, e.g. ``selector.utterances = {**selector.
        utterances, "billing": [...]}``: every cached choice set is dropped and
        embedded again at its next selection (a selection already under way finishes
        with the old ones). A change made to the copy changes nothing."""
        return {name: list(texts) for name, texts in self._utterances.items()}

    @utterances.setter
    def utterances(self, value: Mapping[str, Sequence[str]] | None) -> None:
        checked = _frozen(check_utterances(value, reads_nothing=reads_nothing_of(self.encoder)))
        with self._build_lock, self._lock:
            # A new mapping: a router built from routes made of the old one is not
            # cached (_build tells them apart by identity).
            self._utterances = checked
            self._cache.clear()

    # -- PromptMixin: this selector has no prompts ---------------------------------
    @override
    def _get_prompts(self) -> dict[str, Any]:
        return {}

    @override
    def _update_prompts(self, prompts: PromptDictType) -> None:
        pass

    # -- choice sets ---------------------------------------------------------------
    @staticmethod
    def choice_key(choices: Sequence[ToolMetadata]) -> ChoiceKey:
        """The cache key of a choice set: each choice's name and description, in order.

        Raises:
            InvalidInputError: a choice's name or description is not text.
        """
        _check_fields(choices)
        return tuple((c.name, c.description) for c in choices)

    def _check_choices(
        self, choices: Sequence[ToolMetadata], utterances: Mapping[str, Sequence[str]]
    ) -> None:
        """Refuse an utterance key that looks like a misspelt choice name, and tools
        that share a name when utterances are keyed by name; warn once about choices
        with few examples.

        One selector may serve engines with different tools, so a key that names no
        choice of this set may be meant for another set, not yet seen. It is refused
        only when it looks like a typo here: no set seen so far has a choice of that
        name, and it is close to the name of a choice of this set that has no
        utterances of its own (the choice the misspelt key was meant for). A key
        close to a choice that has its own utterances (``"billing_eu"`` beside
        ``"billing"``) is taken for another set's.
        """
        names = [c.name for c in choices if c.name]
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated and utterances:
            msg = (
                f"several choices share the name {repeated[0]!r}, so utterances keyed by name "
                "cannot tell them apart; give each tool its own name (e.g. "
                "QueryEngineTool.from_defaults(engine, name='billing', description=...))"
            )
            raise InvalidInputError(msg)
        thin = list(
            dict.fromkeys(
                repr(c.name)
                for c in choices
                if c.name and len(utterances.get(c.name, ())) < _FEW_EXAMPLES
            )
        )
        # Choices without a name (plain strings) can have no utterances: one warning,
        # which says so (it named them by a position that changes from set to set).
        unnamed = [_UNNAMED] if len(names) < len(choices) else []
        # Under the cache lock: concurrent first selections of two choice sets must not
        # lose each other's names, nor both warn about the same choice.
        with self._lock:
            refuse_misspelt_key(utterances, self._seen_names, names, "choice")
            fresh = [label for label in [*thin, *unnamed] if label not in self._warned]
            if len(self._warned) + len(fresh) > _MAX_WARNED:
                # Per-user choice names would grow it without end: a name may then be
                # warned about once more.
                self._warned.clear()
            self._warned.update(fresh)
        if _UNNAMED in fresh:
            fresh.remove(_UNNAMED)
            _warn_user(
                "choices without a name (plain strings) route on their description alone, "
                "which is often unreliable, and cannot be given utterances: make them "
                "ToolMetadata(name=..., description=...) and pass utterances={name: [...]} "
                "with a few typical queries for each"
            )
        if fresh:
            _warn_user(
                f"choices with fewer than {_FEW_EXAMPLES} example utterances route mostly on "
                f"their description and name, which is often unreliable: {', '.join(fresh)}; "
                "pass utterances={name: [...]} with a few typical queries for each"
            )

    def _routes(
        self, choices: Sequence[ToolMetadata], utterances: Mapping[str, Sequence[str]]
    ) -> list[Route]:
        if not choices:
            msg = "there are no choices to select from"
            raise InvalidInputError(msg)
        self._check_choices(choices, utterances)
        routes = []
        skip = reads_nothing_of(self.encoder)
        shared = _shared_names(choices)
        for index, choice in enumerate(choices):
            # A description the model reads nothing of (blank, or only a BOM or
            # zero-width spaces) is no text to route by.
            texts = [] if skip(choice.description) else [choice.description]
            if choice.name and choice.name not in shared:
                # A name of only "_", "-" or spaces has no words: the description
                # (and any utterances) describe the choice without it. A name several
                # choices share (LlamaIndex's default "query_engine_tool") tells none
                # apart: as a text of each, a query near it matched them all, tied.
                phrase = _phrase(choice.name)
                texts.extend([phrase] if phrase else [])
                texts.extend(utterances.get(choice.name, ()))
            if not texts:
                what = f"choice {index}"
                if choice.name:
                    what = (
                        f"{what} ({choice.name!r})"
                        if choice.name in shared
                        else f"choice {choice.name!r}"
                    )
                msg = (
                    f"{what} has nothing to route by (no words in its name, no "
                    "description): give it a description or utterances"
                )
                raise InvalidInputError(msg)
            # Routes are named by position: tool names may be missing or repeated.
            routes.append(Route(name=str(index), utterances=texts))
        return routes

    def router_for(self, choices: Sequence[ToolMetadata]) -> SelectionRouter:
        """The router of this choice set, built (one encoder call) the first time."""
        key = self.choice_key(choices)
        router = self._cache.get(key)
        if router is not None:
            return router
        utterances = self._utterances  # one reading for the set (it may be reassigned)
        return self._build(key, self._routes(choices, utterances), utterances=utterances)

    def _build(
        self,
        key: ChoiceKey,
        routes: list[Route],
        selecting: bool = False,
        utterances: Mapping[str, Sequence[str]] | None = None,
    ) -> SelectionRouter:
        """The router of the choice set ``key``: cached, or built from ``routes``
        (``selecting``: counted as an aselect under way on it; ``utterances``: the
        mapping the routes were made from, ``None`` for the current one)."""

        def made() -> SelectionRouter:
            router = SelectionRouter(self.encoder, threshold=self.effective_threshold)
            router.add_routes(routes)
            return router

        def current() -> bool:
            # Made from utterances assigned over since: it serves the selection that
            # made it (begun before the assignment), and is not cached.
            return utterances is None or utterances is self._utterances

        return self._cache.build(key, made, size=self.max_choice_sets, busy=selecting, keep=current)

    # -- selection -----------------------------------------------------------------
    @override
    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        ranked = self.rank(choices, query.query_str, self.policy.top_n)
        self._check_fallback(choices)
        return decide_selection(ranked, choices, self.policy, query.query_str)

    @override
    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> SelectorResult:
        ranked = await self.arank(choices, query.query_str, self.policy.top_n)
        self._check_fallback(choices)
        return decide_selection(ranked, choices, self.policy, query.query_str)

    def _check_fallback(self, choices: Sequence[ToolMetadata]) -> None:
        """Refuse a fallback that names no choice, whatever the query matched: a
        misspelt one otherwise surfaced only at the first query that matched nothing.
        Checked per selection, not when a set's routes are built: a selector shared
        with a ``SynaptorouteToolRetriever`` builds routes for tool sets that have no
        use for the fallback."""
        if self.policy.fallback is not None:
            _fallback_index(choices, self.policy.fallback)

    # -- ranking: the selection's, shared with SynaptorouteToolRetriever -----------
    def rank(self, choices: Sequence[ToolMetadata], query: str, k: int) -> list[RouteMatch]:
        """The ``k`` best choices for ``query``, best first, as :meth:`select` ranks them.

        Each element is named after its choice's index in ``choices`` and judged
        against this selector's threshold; an empty query gives ``[]``. The choice
        set's routes are built at its first ranking (see :meth:`router_for`); the
        query's embedding dispatches LlamaIndex's embedding events.

        Raises:
            InvalidInputError: the choices or the query are not acceptable.
        """
        router = self.router_for(choices)
        with self._query_embedding(router, query, "get_query_embedding"):
            return router.query_top_k(query, k)

    async def arank(
        self,
        choices: Sequence[ToolMetadata],
        query: str,
        k: int,
        *,
        timeout: float | None = None,
    ) -> list[RouteMatch]:
        """:meth:`rank` as :meth:`aselect` ranks: the query is embedded on the router's
        batching worker, off the event loop (``timeout``: the seconds it may wait for
        the worker, ``None`` for no bound), and a choice set's first build runs in a
        thread."""
        key = self.choice_key(choices)
        router = self._cache.get(key, busy=True)
        if router is None:
            # Checked here, so that a warning names the caller's line, not a thread's.
            utterances = self._utterances  # one reading for the set (it may be reassigned)
            routes = self._routes(choices, utterances)
            router = await counted_build(
                lambda: self._build(key, routes, True, utterances), self._cache.release
            )
        try:
            # Embedding and scoring run on the router's worker thread, off the event loop;
            # the embedding's events are dispatched here, in this selection's context.
            with self._query_embedding(router, query, "aget_query_embedding"):
                return await router.aquery_top_k(query, k, timeout=timeout)
        finally:
            self._cache.release(router)

    def _query_embedding(
        self,
        router: SelectionRouter,
        query: str,
        method: QueryEmbeddingCall,
    ) -> AbstractContextManager[None]:
        """LlamaIndex's embedding events around a router call that embeds ``query``, in
        a span named for the embedding's ``method``: none for a query the model reads
        nothing of (the router embeds none) or one that is not text (the router refuses
        it), nor for a wrapped LlamaIndex embedding, which dispatches its own."""
        events = self._embedding_events
        if events is None or not isinstance(query, str) or reads_nothing_of(self.encoder)(query):
            return nullcontext()
        return query_embedding_events(events, router, query, method)

    async def aclose(self) -> None:
        """Stop the batching workers :meth:`aselect` started on the running loop.

        Routers evicted from the cache are stopped too; an evicted router is
        forgotten once no event loop runs a worker of it (one whose worker runs on
        another loop is kept for that loop's ``aclose()``).
        """
        await self._cache.aclose()
