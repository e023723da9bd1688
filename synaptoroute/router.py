"""The router: route management, sync queries, and async queries through the batcher.

Why one module over 400 lines: :class:`AdaptiveRouter` is the public facade, and most
of its length is the documented public methods. Each method holds only the router's
own part (its lock, its cache, its routes dict) and delegates the rest: scoring to
:mod:`~synaptoroute.index`, answers to :mod:`~synaptoroute.decision`, persistence and
replicas' changes to :mod:`~synaptoroute.storage`, fitting to
:mod:`~synaptoroute.fitting`, async batching to :mod:`~synaptoroute.batching`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace as _replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from ._blas import blas_limit
from ._cpu import MAX_THREADS, blas_threads
from ._fork import LEAF, ROUTER, hold_across_fork
from .ann import CLOSE_MARGIN
from .batching import (
    DEFAULT_MAX_BATCH_COST,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_COST,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_WAIT_MS,
    BatchWorker,
    check_timeout,
    text_cost,
    text_cost_cap,
)
from .checks import (
    _empty_to_the_model,
    check_count,
    check_threshold,
    is_number,
    reads_nothing_of,
)
from .decision import (
    KNN_K,
    NEGATIVE_TIE,
    DecisionPolicy,
    decide,
    empty_match,
    negative_first,
    policy_for_routes,
    without_head,
    without_negatives,
)
from .encoder import (
    CallableEncoder,
    Encoder,
    EncoderProtocol,
    EncoderWrapper,
    HashingEncoder,
    _check_model_id,
    check_text,
    default_encoder,
    former_model_ids_of,
)
from .exceptions import (
    EncoderError,
    InvalidInputError,
    ModelMismatchError,
    PolicyNotStoredError,
    RouteExistsError,
    RouteNotFoundError,
    StorageError,
)
from .index import Aggregation, IndexStats, RouteIndex, RouteScores, Snapshot
from .lexical import LexicalIndex
from .models import (
    NEGATIVES_ROUTE,
    SCORE_MAX,
    SCORE_MIN,
    Route,
    RouteMatch,
    clean_utterances,
    utterance_key,
)
from .storage import (
    MemoryStorage,
    ModelInfo,
    SQLiteStorage,
    Storage,
    StoredRoute,
    WatchableStorage,
    open_storage,
)
from .storage.changes import Change, apply_change, install_route

if TYPE_CHECKING:
    # typing.Self is Python 3.11's; typing_extensions comes with pydantic.
    from typing_extensions import Self

    from .evaluation import EvaluationReport
    from .fitting import FitReport

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_THRESHOLD", "AdaptiveRouter", "EmbeddingCache"]

_R = TypeVar("_R")
_K = TypeVar("_K")
_RT = TypeVar("_RT", bound="AdaptiveRouter")

#: Default minimum cosine similarity; chosen on the val splits (see BENCHMARKS.md).
DEFAULT_THRESHOLD = 0.5
#: Utterances from which ``index="auto"`` searches an approximate graph (docs/scale.md).
DEFAULT_ANN_THRESHOLD = 50_000
IndexKind = Literal["auto", "exact", "ann"]
# RouteMatch is frozen, so every empty query can share one result.
_EMPTY_QUERY = empty_match()
_POLICY_KEY = "policy"
# Reads of a store's routes before its model must have held still once (_read_store).
_LOAD_TRIES = 5
_log = logging.getLogger("synaptoroute.router")
#: Default bound of the embedding cache in bytes (keys and vectors).
DEFAULT_CACHE_BYTES = 64 << 20


class EmbeddingCache:
    """A bounded, thread-safe LRU of query embeddings keyed by text.

    Bounded in entries (``maxsize``) and in bytes (``max_bytes``: keys and vectors),
    so long texts cannot grow it past ``max_bytes`` whatever their number. The
    router keys it by the text the encoder reads (see ``Encoder.truncate``).
    """

    def __init__(self, maxsize: int = 10_000, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        hold_across_fork(self, LEAF)
        self.hits = 0
        self.misses = 0
        self.nbytes = 0

    @staticmethod
    def _cost(text: str, vector: NDArray[np.float32]) -> int:
        return sys.getsizeof(text) + vector.nbytes

    def get(self, text: str) -> NDArray[np.float32] | None:
        """The cached vector, refreshed as most recent, or ``None``."""
        with self._lock:
            vec = self._data.get(text)
            if vec is None:
                self.misses += 1
                return None
            self._data.move_to_end(text)
            self.hits += 1
            return vec

    def put(self, text: str, vector: NDArray[np.float32]) -> None:
        """Insert, evicting least recently used entries past ``maxsize`` or ``max_bytes``."""
        cost = self._cost(text, vector)
        if self.maxsize <= 0 or cost > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(text, None)
            if old is not None:
                self.nbytes -= self._cost(text, old)
            self._data[text] = vector
            self.nbytes += cost
            while len(self._data) > self.maxsize or self.nbytes > self.max_bytes:
                key, evicted = self._data.popitem(last=False)
                self.nbytes -= self._cost(key, evicted)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()
            self.nbytes = 0


def _blas_limit(threads: int, configured: bool) -> AbstractContextManager[Any]:
    # The process's one budget (_blas.BlasBudget), shared with fit: queries in
    # different threads do not undo each other's limits. The default rule never
    # raises the count the process had (OPENBLAS_NUM_THREADS=1 per worker).
    return blas_limit(threads, at_most_found=not configured)


class AdaptiveRouter:
    """Routes texts to named routes by similarity to their example utterances.

    Args:
        encoder: any :class:`~synaptoroute.encoder.EncoderProtocol`; default the
            bundled model, loaded once per process and shared by every router built
            without one (:func:`~synaptoroute.encoder.default_encoder`).
        storage: where routes and vectors live; default in memory. Routes already
            in the store are loaded without calling the encoder.
        threshold: default minimum score for a route to match.
        aggregation: how a route's utterance similarities become its score:
            ``"max"`` (nearest utterance), ``"mean_topk"`` or ``"centroid"``. A stored
            policy fitted under another one is kept with a warning (its cuts are on
            other scores); :meth:`open` takes the fitted one by itself.
        top_k: ``k`` for ``"mean_topk"``.
        min_margin: top-1 minus top-2 under this gives no route (0 disables).
        cache_size: query embeddings kept in the LRU cache (also bounded to
            ``DEFAULT_CACHE_BYTES`` of keys and vectors; keyed by the text the encoder
            reads, so long queries cost no more than their first tokens).
        blas_threads: BLAS threads for the similarity product, and the threads of
            the int8 pre-filter's scan (from its next copy on); ``None`` picks 1 when
            a query's float32 products cover fewer than 20,000 rows (the int8 copy and
            the approximate graph leave only a few; ``docs/concepts.md``) and, above,
            the CPUs the process may use (cgroup quota).
        reencode: if the store's vectors come from another model, re-encode them
            with this encoder (otherwise :class:`ModelMismatchError`); so too if some
            are not finite numbers, damaged outside the library (otherwise
            :class:`StorageError`).
        max_batch_size, max_wait_ms, max_queue_size: the async batching worker of
            each event loop (defaults: the encoder's ``preferred_batch_size`` if it
            has one, else 512; 0; 10,000; see ``docs/async.md``).
        max_queue_cost, max_batch_cost: the same worker's bounds in what texts cost
            the encoder (:func:`~synaptoroute.batching.text_cost`: characters it
            reads, plus 16 a text): queued cost beyond which calls are refused
            (1,000,000) and most cost in one batch (32,768); ``None`` for no bound.
        index: ``"auto"`` searches an approximate HNSW graph (the ``ann`` extra) for
            the ``"max"`` aggregation from ``ann_threshold`` utterances on, and scores
            exactly below it or without the library; ``"exact"`` never uses the
            graph; ``"ann"`` uses it at any size and needs the library. Answers the
            graph cannot certify are scored exactly (``docs/scale.md``).
        ann_threshold: utterances from which ``index="auto"`` uses the graph.
        ann_cache: file the graph is saved to and loaded from at start-up (keyed by
            the stored vectors' content). Default: next to a SQLite store's file
            (``<store>.ann``), none for other stores; ``False`` for none.
        ann_depth: the graph's search depth (HNSW ``ef``, at least 16; default 128):
            deeper agrees with the exact route more often and costs more per query
            (measured in ``BENCHMARKS.md``; ``docs/scale.md``).
        ann_margin: when the graph's best two routes, both scored exactly, are closer
            than this, the query is scored exactly anyway (default 0.02, in [0, 1);
            0: never for a near-tie). It buys a little agreement with the exact route
            for the cost of an exact scan on such queries (``docs/scale.md``).

    Example:
        >>> router = AdaptiveRouter()
        >>> router.add_route(Route(name="billing", utterances=["I need a refund"]))
        >>> router.query("How do I get my money back?").name
        'billing'
    """

    def __init__(
        self,
        encoder: EncoderProtocol | None = None,
        storage: Storage | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        aggregation: Aggregation = "max",
        top_k: int = 3,
        min_margin: float = 0.0,
        cache_size: int = 10_000,
        blas_threads: int | None = None,
        reencode: bool = False,
        max_batch_size: int | None = None,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_cost: int | None = DEFAULT_MAX_QUEUE_COST,
        max_batch_cost: int | None = DEFAULT_MAX_BATCH_COST,
        index: IndexKind = "auto",
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        ann_cache: str | os.PathLike[str] | Literal[False] | None = None,
        ann_depth: int = 128,
        ann_margin: float = CLOSE_MARGIN,
    ) -> None:
        if aggregation not in ("max", "mean_topk", "centroid"):
            msg = f"aggregation must be 'max', 'mean_topk' or 'centroid', got {aggregation!r}"
            raise InvalidInputError(msg)
        threshold = check_threshold(threshold, "threshold")
        if not is_number(min_margin) or not 0.0 <= min_margin <= SCORE_MAX - SCORE_MIN:
            msg = (
                f"min_margin must be a number in [0, {SCORE_MAX - SCORE_MIN:g}], got {min_margin!r}"
            )
            raise InvalidInputError(msg)
        top_k = check_count(top_k, "top_k", 1)
        cache_size = check_count(cache_size, "cache_size", 0)
        self.encoder: EncoderProtocol = encoder if encoder is not None else default_encoder()
        _check_encoder(self.encoder)
        self._fresh_output = _returns_new_arrays(self.encoder)
        # The id the store records for the encoder's model when it is one of the
        # encoder's former_model_ids (_load); None: the encoder's own.
        self._stored_id: str | None = None
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.cache = EmbeddingCache(cache_size)
        self._lock = threading.RLock()
        hold_across_fork(self, ROUTER)  # a route change holds it while it encodes
        self._routes: dict[str, Route] = {}
        # The policy of a store that holds none: what a reload finding none goes back to.
        self._default_policy = DecisionPolicy(threshold=threshold, min_margin=min_margin)
        self._policy = self._default_policy
        self._index = RouteIndex(
            self.encoder.dimension,
            aggregation=aggregation,
            top_k=top_k,
            **_ann_options(
                index, ann_threshold, ann_cache, aggregation, self.storage, ann_depth, ann_margin
            ),
        )
        self.blas_threads = blas_threads  # held by the index, which its copies read
        self._lexical = LexicalIndex()
        #: Use the lexical signal of a hybrid head (set False to route dense only).
        self.hybrid = True
        # One batching worker per event loop: the first loop to query takes this one,
        # other loops (threads running asyncio.run, notebooks, Celery/Django workers)
        # get their own with the same settings, so batching stays within each loop.
        #: What a text at the encoder's token limit costs the queue (characters;
        #: :func:`~synaptoroute.batching.text_cost_cap`): a longer text costs no more.
        self.text_cost_cap = text_cost_cap(self.encoder)
        if max_batch_size is None:
            # A custom encoder's hint that is no whole number above 0 is ignored: the
            # refusal would have named max_batch_size, which the caller never passed.
            max_batch_size = DEFAULT_MAX_BATCH_SIZE
            with contextlib.suppress(InvalidInputError):
                hint = getattr(self.encoder, "preferred_batch_size", None)
                max_batch_size = check_count(hint, "preferred_batch_size", 1)
        self._worker: BatchWorker[_Request, _Answer] = BatchWorker(
            self._answer,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue_size=max_queue_size,
            # A partial, not a bound method: the worker must not hold the router.
            cost=functools.partial(_request_cost, cap=self.text_cost_cap),
            max_queue_cost=max_queue_cost,
            max_batch_cost=max_batch_cost,
        )
        # Weak by loop, and no worker holds its loop (only its calls in flight do): a
        # loop dropped without close() takes its entry along, and with it that loop's
        # worker and its thread (the first worker, held here, is only set free).
        self._loop_workers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, BatchWorker[_Request, _Answer]
        ] = weakref.WeakKeyDictionary()
        self._workers_lock = threading.Lock()
        hold_across_fork(self, LEAF, lock="_workers_lock")
        self._load(reencode)
        self._start_follower()

    @classmethod
    def open(
        cls,
        store: str | os.PathLike[str] | None = None,
        encoder: EncoderProtocol | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """A router on the store that ``store`` names, as the CLI and the service open one.

        Args:
            store: a SQLite file (created if missing; ``":memory:"`` for a SQLite
                database in memory), a ``postgresql://`` URL, or ``None`` for a
                :class:`~synaptoroute.storage.MemoryStorage`.
            encoder: as for the constructor (default: the shared bundled model).
            storage_options: keyword arguments of the store's class
                (:class:`~synaptoroute.storage.SQLiteStorage`, e.g. ``poll_interval``,
                or :class:`~synaptoroute.postgres.PostgresStorage`).
            options: the constructor's other keyword arguments.

        Without ``aggregation`` in ``options``, the router scores with the aggregation
        (and ``top_k``) the store's fitted policy was fitted on, if it records one
        (``fit`` does): its cuts are on those scores. A store never fitted gets the
        constructor's default.

        The store is closed again if the router cannot be built (a model mismatch,
        a bad option), so a failed open leaves nothing behind.

        Example:
            >>> router = AdaptiveRouter.open("routes.db")  # doctest: +SKIP
        """
        storage: Storage = (
            MemoryStorage() if store is None else open_storage(store, **(storage_options or {}))
        )
        try:
            if "aggregation" not in options and options.get("index") != "ann":
                # Score as the store's last fit did: its cuts are on those scores (the
                # CLI and the service have no aggregation option of their own).
                state = storage.get_state(_POLICY_KEY)
                # A damaged one (not a mapping) is the constructor's to refuse, by name.
                info = state.get("info") if isinstance(state, Mapping) else None
                fitted = _fitted_scoring(info) if isinstance(info, Mapping) else None
                if fitted is not None:
                    options = {"aggregation": fitted[0], "top_k": fitted[1], **options}
            return cls(encoder, storage, **options)
        except BaseException:
            storage.close()
            raise

    def warm(self) -> None:
        """Load the model and compile the index now, so that the first query is not slow.

        Blocking; :meth:`start` compiles the index too (off the event loop) but does
        not load the model.
        """
        self.encoder.encode(["warm-up"])  # loads the model and its runtime's kernels
        # Builds the tokenizer's rules the first such query needs (encoders with them).
        reads_nothing_of(self.encoder)("\u200b")
        self._index.snapshot()

    # -- loading -------------------------------------------------------------------
    @property
    def model(self) -> ModelInfo:
        """The model id the router's vectors are stored under, and their dimension:
        the encoder's, or the id an earlier version gave the same model where the
        store records that one (the encoder's ``former_model_ids``)."""
        return ModelInfo(self._stored_id or self.encoder.model_id, self._index.dimension)

    def _read_store(self) -> tuple[list[StoredRoute], ModelInfo | None]:
        # The routes and the model they were encoded with, as of one moment: another
        # process's reencode may commit between two reads (a Storage reads each in its
        # own transaction), and vectors read as of one model must not be taken for
        # another's. The model is read on both sides of the routes; once it is the same
        # on both, no reencode committed in between.
        for _ in range(_LOAD_TRIES):
            before = self.storage.model_info()
            stored = list(self.storage.load())
            info = self.storage.model_info()
            if info == before:
                return stored, info
        msg = f"the store's model changed {_LOAD_TRIES} times while its routes were read"
        raise StorageError(msg)

    def _load(self, reencode: bool) -> None:
        stored, info = self._read_store()
        # A store whose routes hold no utterance holds no vector: its model is no one's
        # (as every back end's write path agrees), and the encoder's takes its place.
        holds_vectors = any(item.route.utterances for item in stored)
        self._stored_id = None
        if holds_vectors and info is not None and not reencode and self._former_model(info):
            # The id an earlier version gave this model: the store keeps it (nothing is
            # rewritten, so replicas of that version still follow), and so do this
            # router's writes. reencode=True re-encodes it under the encoder's own id.
            self._stored_id = info.model_id
            _log.warning(
                "the store records model %r, the id versions before 0.3 gave %r and every "
                "other model of its class: it is opened as that model's and keeps its id; "
                "if another model wrote it, reopen with reencode=True",
                info.model_id,
                self.encoder.model_id,
            )
        damaged = _damaged_routes(stored)
        if damaged and not reencode:
            # A NaN in a stored vector made its route's every score NaN, read as no
            # score: the route was never chosen again, and nothing said why.
            shown = ", ".join(repr(name) for name in damaged[:5])
            more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
            msg = (
                f"the store holds vectors that are not finite numbers (damaged outside the "
                f"library) in route(s) {shown}{more}; reopen with reencode=True (the CLI's "
                "--reencode) to encode every utterance again from its stored text"
            )
            raise StorageError(msg)
        if holds_vectors and info is not None and (info != self.model or damaged):
            if not reencode:
                msg = (
                    f"the store holds vectors of model {info.model_id!r} (dimension "
                    f"{info.dimension}) but the encoder is {self.model.model_id!r} (dimension "
                    f"{self.model.dimension}); pass reencode=True to re-encode every utterance "
                    "with the new encoder, or open the store with its original model"
                )
                raise ModelMismatchError(msg)
            stored = self._reencode(stored)
        for item in stored:
            self._routes[item.route.name] = item.route
        self._index.load(
            [(item.route.name, item.vectors, item.route.utterances) for item in stored]
        )
        state = self.storage.get_state(_POLICY_KEY)
        if state is not None:
            self._policy = self._policy_from_state(state)

    def _former_model(self, info: ModelInfo) -> bool:
        """Whether the store's ``info`` names this encoder's model by an id an earlier
        version stored (``former_model_ids``: a LangChain class named by
        ``model_id`` only), at this dimension."""
        return (
            info.model_id != self.encoder.model_id
            and info.model_id in former_model_ids_of(self.encoder)
            and info.dimension == self.encoder.dimension
        )

    def _reencode(self, stored: list[StoredRoute]) -> list[StoredRoute]:
        # Encoding a large store takes minutes, while processes still on the old model
        # may write: after each encode the routes are read again, and a change is
        # encoded (only its new texts) before replace_all writes all in one transaction.
        # A write is then lost only if it lands between the last read and that write
        # (a Storage has no compare-and-set), not at any time during the encode.
        routes = [item.route for item in stored]
        texts = [u for route in routes for u in route.utterances]
        vectors = self._encode(texts)
        for _ in range(_LOAD_TRIES):
            again, _ = self._read_store()
            if [item.route for item in again] == routes:
                fresh = _with_vectors(routes, vectors)
                self.storage.replace_all(fresh, self.model)
                return fresh
            # Changed meanwhile (rare): reuse what was encoded, encode the new texts.
            done = dict(zip(texts, vectors, strict=True))
            routes = [item.route for item in again]
            texts = [u for route in routes for u in route.utterances]
            new = list(dict.fromkeys(u for u in texts if u not in done))
            if new:
                done.update(zip(new, self._encode(new), strict=True))
            vectors = np.array([done[u] for u in texts], dtype=np.float32).reshape(
                len(texts), self.model.dimension
            )
        msg = f"the store changed {_LOAD_TRIES} times while it was re-encoded; nothing was written"
        raise StorageError(msg)

    def _encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The encoder's vectors for ``texts``, checked against the protocol: a fault of
        the encoder is an :class:`EncoderError`, before anything uses them."""
        dimension = self._index.dimension  # the router's, fixed: not what the encoder says now
        if not texts:
            return np.zeros((0, dimension), dtype=np.float32)
        raw = self.encoder.encode(list(texts))
        # A copy when an encoder of another kind hands over an array it may write
        # again (a pooled output buffer): the index keeps these rows. The library's own
        # return new arrays (no second copy of a bulk encode at 1M rows).
        try:
            vectors = (
                np.array(raw, dtype=np.float32)
                if isinstance(raw, np.ndarray) and not self._fresh_output
                else np.asarray(raw, dtype=np.float32)
            )
        except (TypeError, ValueError) as exc:  # ragged or non-numeric rows: the model's fault
            msg = (
                f"encoder {self.encoder.model_id!r} returned rows that are not a matrix "
                f"of numbers: {exc}"
            )
            raise EncoderError(msg) from exc
        if vectors.shape != (len(texts), dimension):
            msg = (
                f"encoder {self.encoder.model_id!r} returned shape {vectors.shape}, "
                f"expected ({len(texts)}, {dimension}): one row of the router's "
                "dimension per text"
            )
            raise EncoderError(msg)
        if not np.isfinite(vectors).all():
            # A NaN score compares false with every threshold and would pass as a match.
            msg = f"encoder {self.encoder.model_id!r} returned NaN or infinite values"
            raise EncoderError(msg)
        squares = np.einsum("ij,ij->i", vectors, vectors)
        # Unit rows (a row of zeros, a text with nothing to hash, scores 0 everywhere):
        # a score is a cosine, and every threshold reads it as one.
        off = (np.abs(squares - 1.0) > _UNIT_TOLERANCE) & (squares > 0.0)
        if off.any():
            row = int(np.flatnonzero(off)[0])
            msg = (
                f"encoder {self.encoder.model_id!r} returned a row of L2 norm "
                f"{math.sqrt(float(squares[row])):.4g} (text {row}); the router needs unit "
                "rows: normalise them (e.g. normalize_embeddings=True), or wrap the "
                "function in CallableEncoder, which does"
            )
            raise EncoderError(msg)
        return vectors

    # -- route management ------------------------------------------------------------
    def add_route(self, route: Route, *, replace: bool = False) -> None:
        """Add a route (encodes its utterances once).

        Raises:
            RouteExistsError: the name exists and ``replace`` is false.
        """
        self.add_routes([route], replace=replace)

    def _store_route(self, route: Route, *, replace: bool) -> bool:
        # add_route(route, replace=...) that tells whether this call created the route,
        # decided under the lock: the service's PUT answers 201 or 200 by it, and its
        # POST 201 or 409 (add_route takes a route equal to the stored one as a no-op,
        # so two identical POSTs at once both seemed to create it).
        created: list[str] = []
        self._add_routes(self._checked_routes([route]), replace=replace, created=created)
        return created == [route.name]

    def add_routes(
        self, routes: Iterable[Route], *, replace: bool = False, negatives: Sequence[str] = ()
    ) -> list[str]:
        """Add several routes with one encoder call; all or nothing.

        A route equal to the one already stored under its name is skipped; a route
        that replaces one keeps the vectors of the utterances both share (only new
        utterances are encoded).

        Args:
            routes: the routes.
            replace: replace routes that exist (else :class:`RouteExistsError`).
            negatives: negative examples to add in the same transaction (see
                :meth:`add_negatives`), merged with the held ones under the lock.

        Returns:
            The negative examples that were new (empty without ``negatives``).

        Raises:
            RouteExistsError: a name exists and ``replace`` is false.
            InvalidInputError: two routes share a name, or one is named
                :data:`~synaptoroute.models.NEGATIVES_ROUTE` (reserved: the negative
                examples are changed by :meth:`add_negatives` only), or a new
                utterance or negative example is one the encoder reads nothing of
                (only whitespace and characters its tokenizer deletes: a BOM,
                zero-width spaces, NUL...; ``Encoder.reads_nothing``), which it would
                embed as ``""``. Nothing is encoded or stored then.
        """
        _not_a_str(negatives, "add_routes(negatives=...)")
        return self._add_routes(self._checked_routes(routes), replace=replace, negatives=negatives)

    def _checked_routes(self, routes: Iterable[Route]) -> list[Route]:
        if isinstance(routes, Route):  # a pydantic model iterates over its fields
            msg = "add_routes takes a list of routes; add_route takes one"
            raise TypeError(msg)
        routes = list(routes)
        for route in routes:
            if not isinstance(route, Route):
                msg = f"add_routes takes Route objects, got {type(route).__name__}: {route!r:.80}"
                raise TypeError(msg)
        names = [r.name for r in routes]
        if NEGATIVES_ROUTE in names:
            # A route of that name would replace (or, deleted, wipe) every negative
            # example: they are managed through add_negatives / delete_negatives only.
            msg = (
                f"{NEGATIVES_ROUTE!r} is reserved for the negative examples "
                "(add_negatives, delete_negatives); give the route another name"
            )
            raise InvalidInputError(msg)
        return routes

    def _add_routes(
        self,
        routes: list[Route],
        *,
        replace: bool,
        negatives: Sequence[str] = (),
        created: list[str] | None = None,
    ) -> list[str]:
        # add_routes without the reserved-name check: add_negatives stores the
        # negative examples through it. ``created`` receives the names that were new.
        new_negatives = clean_utterances(list(negatives))
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            msg = "duplicate route names in one add_routes call"
            raise InvalidInputError(msg)
        with self._lock:
            if new_negatives:
                have = self.negatives
                new_negatives = _new_texts(new_negatives, have)
                if new_negatives:  # the held ones plus the new: replaces the reserved route
                    routes.append(Route(name=NEGATIVES_ROUTE, utterances=[*have, *new_negatives]))
            # Re-adding an identical route is a no-op, so start-up scripts can rerun.
            routes = [r for r in routes if self._routes.get(r.name) != r]
            names = [r.name for r in routes]
            if not replace:
                mine = NEGATIVES_ROUTE if new_negatives else None
                taken = [n for n in names if n in self._routes and n != mine]
                if taken:
                    msg = f"route {taken[0]!r} exists; pass replace=True to replace it"
                    raise RouteExistsError(msg)
            stored = _with_vectors(routes, self._vectors_for(routes))
            policy, notes = self._policy_for({item.route.name: item.route for item in stored})
            self.storage.put_routes(stored, self.model)  # one transaction: all or nothing
            if created is not None:
                created.extend(n for n in names if n not in self._routes)

            def install() -> None:  # stored in one transaction, served at once
                for item in stored:
                    install_route(self._routes, self._index, item.route, item.vectors)

            self._install(install, policy, notes)
            return new_negatives

    def _vectors_for(self, routes: Sequence[Route]) -> NDArray[np.float32]:
        """One row per utterance of ``routes``, in order: the stored vector where the
        route already holds that utterance, else encoded (all in one encoder call)."""
        held = {r.name: self._index.vectors_of(r.name) for r in routes if r.name in self._routes}
        missing: dict[str, str] = {}  # each text to encode -> the first route bringing it
        for r in routes:
            known = held.get(r.name, {})
            for u in r.utterances:
                if u not in known:
                    missing.setdefault(u, r.name)
        self._refuse_unread((name, u) for u, name in missing.items())
        encoded = dict(zip(missing, self._encode(list(missing)), strict=True))
        out = np.empty((sum(len(r.utterances) for r in routes), self._index.dimension), np.float32)
        i = 0
        for r in routes:
            known = held.get(r.name, {})
            for u in r.utterances:
                out[i] = known[u] if u in known else encoded[u]
                i += 1
        return out

    def _refuse_unread(self, utterances: Iterable[tuple[str, str]]) -> None:
        """:class:`InvalidInputError` for the first ``(route name, utterance)`` whose
        utterance the encoder reads nothing of: it would be embedded as ``""`` is, a
        vector that matches queries. Called before anything is encoded or stored."""
        reads_nothing = reads_nothing_of(self.encoder)
        for name, text in utterances:
            if reads_nothing(text):
                what = (
                    "negative example" if name == NEGATIVES_ROUTE else f"route {name!r}: utterance"
                )
                raise _empty_to_the_model(what, text)

    def add_utterances(self, name: str, utterances: Sequence[str]) -> list[str]:
        """Add example utterances to a route; returns those that were new.

        Raises:
            RouteNotFoundError: no such route.
            InvalidInputError: an utterance is not a string, is blank, or is one the
                encoder reads nothing of (see :meth:`add_routes`); nothing is changed.
        """
        _not_a_str(utterances, "add_utterances")
        # An unknown name (the reserved one too) fails before encoding.
        return self._add_utterances(self.get_route(name).name, utterances)

    def _add_utterances(self, name: str, utterances: Sequence[str]) -> list[str]:
        cleaned = clean_utterances(list(utterances))
        with self._lock:
            route = self._held(name)
            new = _new_texts(cleaned, route.utterances)
            if not new:
                return []
            self._refuse_unread((name, u) for u in new)
            vectors = self._encode(new)
            updated = route.model_copy(update={"utterances": [*route.utterances, *new]})
            # From its first utterances on, it scores: a route a fitted head may lack.
            policy, notes = self._policy_for({name: updated} if not route.utterances else {})
            self.storage.add_utterances(name, new, vectors, self.model)

            def install() -> None:
                self._routes[name] = updated
                self._index.add(name, vectors, new)

            self._install(install, policy, notes)
            return new

    def delete_route(self, name: str) -> None:
        """Remove a route.

        Raises:
            RouteNotFoundError: no such route (a ``KeyError``).
        """
        # The reserved name is no route: delete_negatives.
        self._delete_route(self.get_route(name).name)

    def _delete_route(self, name: str) -> None:
        with self._lock:
            self._held(name)
            policy, notes = self._policy_for({name: None})
            self.storage.delete_route(name)

            def install() -> None:
                del self._routes[name]
                self._index.delete_route(name)

            self._install(install, policy, notes)

    def delete_utterances(self, name: str, utterances: Sequence[str]) -> int:
        """Remove utterances from a route; returns how many were removed."""
        _not_a_str(utterances, "delete_utterances")
        return self._delete_utterances(self.get_route(name).name, utterances)

    def _delete_utterances(self, name: str, utterances: Sequence[str]) -> int:
        with self._lock:
            route = self._held(name)
            # The stored forms equal under NFC to those named (an old store may hold both).
            wanted = _named_keys(utterances)
            drop = {u for u in route.utterances if utterance_key(u) in wanted}
            if not drop:
                return 0
            self.storage.delete_utterances(name, sorted(drop))
            self._routes[name] = route.model_copy(
                update={"utterances": [u for u in route.utterances if u not in drop]}
            )
            return self._index.delete_texts(name, sorted(drop))

    def set_threshold(self, name: str, threshold: float | None) -> Route:
        """Set (or with ``None`` clear) a route's own threshold; returns the route as
        changed (a concurrent change may follow it before ``get_route`` would read it)."""
        if threshold is not None:
            threshold = check_threshold(threshold, "threshold")
        with self._lock:
            route = self.get_route(name).model_copy(update={"threshold": threshold})
            self.storage.update_route(route)
            self._routes[route.name] = route
            return route

    @property
    def threshold(self) -> float:
        """The default threshold for routes without their own."""
        return self._policy.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = check_threshold(value, "threshold")
        with self._lock:  # read and replaced as one: a fit or route change meanwhile stays
            self.set_policy(_replace(self._policy, threshold=value))

    @property
    def blas_threads(self) -> int | None:
        """BLAS threads for the similarity product and the int8 scan's next copy
        (``None``: by the rows each covers)."""
        return self._index.blas_threads

    @blas_threads.setter
    def blas_threads(self, value: int | None) -> None:
        if value is not None:
            # Past MAX_THREADS the int8 copy's session refused it (the pre-filter was
            # dropped for good, said only in a log) and ctypes cut it for BLAS.
            value = check_count(value, "blas_threads", 1)
            if value > MAX_THREADS:
                msg = f"blas_threads must be at most {MAX_THREADS}, got {value}"
                raise InvalidInputError(msg)
        self._index.blas_threads = value

    @property
    def policy(self) -> DecisionPolicy:
        """The current decision policy (default threshold, margin, fitted thresholds)."""
        return self._policy

    def set_policy(self, policy: DecisionPolicy) -> None:
        """Replace the decision policy and persist it. A fitted head that does not know
        the current routes is dropped, with a warning, as a route change drops it: a
        policy read before a route change cannot bring back the head it dropped.
        Thresholds are kept as given (a route they name may be added after).

        Raises:
            InvalidInputError: a threshold outside the score range (a fitted cut may
                lie up to 0.001 past it), ``min_margin`` outside [0, 2], an ``info``
                that is not JSON (NaN and infinity included), or a fitted head
                trained on another model's embeddings (another router's policy:
                ``fit`` this one); nothing is changed.
        """
        _check_policy(policy)
        head = policy.head
        if head is not None and (
            head.model_id != self.model.model_id or head.weights.shape[0] != self.model.dimension
        ):
            # Reopening drops such a head (_policy_from_state): kept here, it would
            # decide on vectors it was not trained on, or fail every query's product.
            msg = (
                f"the policy's fitted head was trained on {head.model_id!r} embeddings "
                f"(dimension {head.weights.shape[0]}), not this router's "
                f"{self.model.model_id!r} (dimension {self.model.dimension}); fit() this "
                "router, or set the policy without its head"
            )
            raise InvalidInputError(msg)
        with self._lock:
            # The head only: thresholds may name routes to be added after (as before).
            notes: list[str] = []
            if policy.head is not None:
                checked, notes = _reconciled(policy, self._routes)
                if checked.head is None:
                    policy = without_head(policy)
            self.storage.set_state(_POLICY_KEY, policy.to_state())
            self._policy = policy
        for note in notes:
            warnings.warn(note, stacklevel=_outside_the_package())

    def _policy_for(self, changed: Mapping[str, Route | None]) -> tuple[DecisionPolicy, list[str]]:
        """The policy reconciled with the routes as ``changed`` leaves them (``None``:
        deleted; empty: as they are) and the notes on what it dropped: pure, and
        checked, before the change is stored, so a policy that cannot be kept stops
        the change before anything is written."""
        if not changed:
            return self._policy, []
        after = {n: r for n, r in {**self._routes, **changed}.items() if r is not None}
        policy, notes = _reconciled(self._policy, after)
        if policy is not self._policy:
            _check_policy(policy)
        return policy, notes

    def _install(
        self, install: Callable[[], None], policy: DecisionPolicy, notes: Sequence[str]
    ) -> None:
        """Serve a stored route change (``install`` changes the routes and the index)
        with ``policy``, stored first when it changed: both in one ``changing()`` block,
        so a query sees both or neither, after the store's writes (the store's locks
        come before the index's: synaptoroute._fork)."""
        written = False
        try:
            if policy is not self._policy:
                self.storage.set_state(_POLICY_KEY, policy.to_state())
            written = True
        except StorageError as exc:
            # The store's message speaks of the policy's own write (which changed
            # nothing); the route change before it was committed and is served.
            msg = (
                "the route change was stored and is served, but storing the decision "
                "policy reconciled with it failed, so the router and the store keep "
                "the previous policy (the next change of the routes or of the policy "
                f"stores a reconciled one). The policy write: {exc}"
            )
            raise PolicyNotStoredError(msg) from exc
        finally:
            # The routes are stored: serve them, with the policy only if it was stored.
            with self._index.changing():
                install()
                if written:
                    self._policy = policy
        for note in notes:
            warnings.warn(note, stacklevel=_outside_the_package())

    def fit(self, texts: Sequence[str], labels: Sequence[str | None], **options: Any) -> FitReport:
        """Fit the decision policy on labelled texts (label ``None``: no route fits).

        Options and the method are described in :func:`synaptoroute.fitting.fit_policy`;
        the fitted policy is installed and saved in the storage. With
        ``router.hybrid = False`` the default ``hybrid="auto"`` fits a dense-only head,
        as queries then leave the lexical signals out.
        """
        from .fitting.fit import FitInputs, fit_policy

        if not self.hybrid and options.get("hybrid", "auto") == "auto":
            # Queries leave the lexical signals out: a head must not be chosen for them.
            options["hybrid"] = False
        with self._lock:
            snapshot = self._index.snapshot()
            inputs = FitInputs(
                snapshot=snapshot,
                embed=self._encode,
                policy=self.policy,
                route_thresholds={name: r.threshold for name, r in self._routes.items()},
                lexical=lambda: self._lexical.view(snapshot),
                features=self._lexical.features,
                model_id=self.model.model_id,
                blas_threads=self.blas_threads,
                reads_nothing=reads_nothing_of(self.encoder),
                hybrid=self.hybrid,
            )
            policy, report = fit_policy(inputs, texts, labels, **options)
            self.set_policy(policy)
        return report

    def evaluate(
        self, texts: Sequence[str], labels: Sequence[str | None], **options: Any
    ) -> EvaluationReport:
        """Route labelled texts and report accuracy, per-route figures and mistakes.

        See :func:`synaptoroute.evaluation.evaluate_router`.
        """
        from .evaluation import evaluate_router

        return evaluate_router(self, texts, labels, **options)

    def get_route(self, name: str) -> Route:
        """The route called ``name``.

        A name is looked up as :class:`Route` keeps it, without the whitespace around
        it, here and wherever a route is named (``delete_route``, ``add_utterances``).

        Raises:
            RouteNotFoundError: no such route (a ``KeyError``).
        """
        if isinstance(name, str):
            name = name.strip()
        if name == NEGATIVES_ROUTE:  # held like a route, but none: see add_negatives
            raise RouteNotFoundError(name)
        return self._held(name)

    def _held(self, name: str) -> Route:
        # A route by name, the reserved route of the negative examples included.
        try:
            return self._routes[name]
        except KeyError:
            raise RouteNotFoundError(name) from None

    def list_routes(self) -> list[Route]:
        """Every route, in the order they were added (a replaced route keeps its place,
        as in the store and every replica); the negative examples are not a route."""
        # A copy (one C call, atomic under the GIL): a route change may add or delete
        # a name while this runs, and changes the dict in place (O(1) per add).
        return [r for name, r in self._routes.copy().items() if name != NEGATIVES_ROUTE]

    @property
    def route_names(self) -> list[str]:
        """Names of every route."""
        return [name for name in self._routes.copy() if name != NEGATIVES_ROUTE]

    # -- negative examples ------------------------------------------------------------
    @property
    def negatives(self) -> list[str]:
        """The negative examples: texts that must route nowhere (see :meth:`add_negatives`)."""
        route = self._routes.get(NEGATIVES_ROUTE)
        return [] if route is None else list(route.utterances)

    @property
    def has_negatives(self) -> bool:
        """Whether the router holds negative examples (without copying them)."""
        return NEGATIVES_ROUTE in self._routes

    def add_negatives(self, texts: Sequence[str]) -> list[str]:
        """Add negative examples: a query nearer to one of them than to every route
        gets no route (reason ``negative_example``), and :meth:`fit` trains the head
        to reject them. They are kept in the storage like a route (the reserved
        :data:`~synaptoroute.models.NEGATIVES_ROUTE`), so every back end and replica
        has them.

        Returns:
            The texts that were new.

        Raises:
            InvalidInputError: a text is not a string, is blank, or is one the encoder
                reads nothing of (see :meth:`add_routes`); nothing is changed.
        """
        _not_a_str(texts, "add_negatives")
        cleaned = clean_utterances(list(texts))
        with self._lock:
            held = NEGATIVES_ROUTE in self._routes
            if held:
                try:
                    return self._add_utterances(NEGATIVES_ROUTE, cleaned)
                except RouteNotFoundError:
                    # Another replica deleted them all, and this one has not applied it
                    # yet: they are made anew (the negatives are no route to a caller).
                    pass
            if cleaned:
                self._add_routes([Route(name=NEGATIVES_ROUTE, utterances=cleaned)], replace=held)
            return cleaned

    def delete_negatives(self, texts: Sequence[str]) -> int:
        """Remove negative examples; returns how many were removed."""
        _not_a_str(texts, "delete_negatives")
        with self._lock:
            route = self._routes.get(NEGATIVES_ROUTE)
            if route is None:
                return 0
            have = set(route.utterances)
            try:
                if {utterance_key(h) for h in have} <= _named_keys(texts):
                    # All of them: one transaction, so no crash can leave an empty
                    # reserved route.
                    self._delete_route(NEGATIVES_ROUTE)
                    return len(have)
                return self._delete_utterances(NEGATIVES_ROUTE, texts)
            except RouteNotFoundError:
                return 0  # another replica deleted them all; this one follows soon

    # The negative examples are no route here either, as in route_names.
    def __contains__(self, name: object) -> bool:
        return name != NEGATIVES_ROUTE and name in self._routes

    def __len__(self) -> int:
        return len(self._routes) - (NEGATIVES_ROUTE in self._routes)

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for the index's background work (int8 copy, approximate graph).

        Queries never wait for it; tests, benchmarks and start-up scripts that want
        the steady state do.

        Args:
            timeout: seconds to wait for each background step.

        Returns:
            ``True`` once nothing runs in the background.
        """
        self._index.snapshot()
        return self._index.wait_for_int8(timeout) and self._index.wait_for_ann(timeout)

    @property
    def index_stats(self) -> IndexStats:
        """Counters of the route index (compiles, rebuilds, copies)."""
        return self._index.stats

    # -- queries -------------------------------------------------------------------
    def _embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed queries through the LRU cache; each distinct miss is encoded once."""
        out = np.empty((len(texts), self._index.dimension), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        # Keyed by what the encoder reads: a 1 MB query is cached as its first tokens.
        truncate = getattr(self.encoder, "truncate", None)
        for i, text in enumerate(texts):
            key = truncate(text) if truncate is not None else text
            vec = self.cache.get(key)
            if vec is None:
                missing.setdefault(key, []).append(i)
            else:
                out[i] = vec
        if missing:
            vectors = self._encode(list(missing))
            for (text, rows), vec in zip(missing.items(), vectors, strict=True):
                out[rows] = vec
                self.cache.put(text, vec.copy())
        return out

    def _score(
        self,
        vectors: NDArray[np.float32],
        k: int,
        snapshot: Snapshot | None = None,
        knn: int = 0,
    ) -> tuple[Snapshot, list[RouteScores]]:
        snapshot = self._index.snapshot() if snapshot is None else snapshot
        # Sized by the rows the products cover, not the matrix: in the graph's path they
        # are a few thousand, and a second thread would fight the graph's feed.
        threads = blas_threads(snapshot.blas_rows, self.blas_threads)
        limit = (
            _blas_limit(threads, self.blas_threads is not None)
            if len(vectors) and snapshot.blas_rows
            else nullcontext()
        )
        with limit:
            return snapshot, snapshot.score(vectors, k, knn=knn)

    def _answer(self, requests: Sequence[_Request]) -> list[_Answer]:
        """The one query path: validate, embed (cached, one encoder call), score, decide.

        Serves :meth:`query`, :meth:`query_batch`, :meth:`query_top_k` and the batching
        worker, whose batches mix the three. Requests are scored on one snapshot,
        grouped by how many routes they rank, so each answer is exactly what the
        request alone would get. A text the model reads nothing of is an empty query:
        whitespace, or, where the encoder says so (``Encoder.reads_nothing``), only
        characters its tokenizer deletes (a BOM, zero-width spaces, NUL...), which the
        model reads as it reads ``""``, a vector that could pass a threshold.
        """
        for request in requests:
            check_text(request.text)
        answers: list[_Answer] = [_EMPTY_QUERY if r.top_k is None else [] for r in requests]
        reads_nothing = reads_nothing_of(self.encoder)
        live = [i for i, r in enumerate(requests) if not reads_nothing(r.text)]
        if not live:
            return answers
        vectors = self._embed([requests[i].text for i in live])
        # Compile and scoring as one read: a graph feed started or running meanwhile
        # inserts no row until the requests are answered (ann.ReadGate).
        with self._index.reading():
            self._rank_and_decide(requests, live, vectors, answers)
        return answers

    def _rank_and_decide(
        self,
        requests: Sequence[_Request],
        live: list[int],
        vectors: NDArray[np.float32],
        answers: list[_Answer],
    ) -> None:
        """Score ``requests[live]`` (their ``vectors``) on one snapshot and write each
        decision into ``answers``."""
        snapshot, policy = self._snapshot_and_policy()
        thresholds = self._route_thresholds()
        # One more ranked route when the negative examples' route may take a place.
        extra = int(NEGATIVES_ROUTE in self._routes)
        head = policy.head
        lexical = None
        if head is not None and head.beta and self.hybrid:
            lexical = self._lexical.view(snapshot)
        groups: dict[int | None, list[int]] = {}  # top_k -> positions in live
        for j, i in enumerate(live):
            groups.setdefault(requests[i].top_k, []).append(j)
        for top_k, rows in groups.items():
            # A ranking scores one route more than it returns, so its last route is
            # judged against its true runner-up, as it is when k is larger.
            k = (max(2, policy.ranked_k) if top_k is None else top_k + 1) + extra
            batch = vectors if len(groups) == 1 else vectors[rows]
            # A head that reads the k-th nearest utterance gets it from the same scan.
            knn = KNN_K if top_k is None and head is not None and head.needs_knn else 0
            _, ranked = self._score(batch, k, snapshot, knn)
            for j, scores in zip(rows, ranked, strict=True):
                if extra and (top_k is None or requests[live[j]].negatives):
                    scores = self._tied_negatives(vectors[j], scores, snapshot)
                if top_k is None:
                    answers[live[j]] = decide(
                        scores,
                        snapshot,
                        policy,
                        thresholds,
                        vectors[j],
                        # No text: the head's n-gram features and lexical term stay out.
                        text=requests[live[j]].text if self.hybrid else None,
                        lexical=lexical,
                    )
                elif requests[live[j]].negatives and negative_first(scores, snapshot):
                    # The decision query gives, from the same ranking: one read, one snapshot.
                    answers[live[j]] = [decide(scores, snapshot, policy, thresholds)]
                else:
                    scores = without_negatives(scores, snapshot)
                    answers[live[j]] = _each_route(scores, snapshot, policy, thresholds)[:top_k]

    def _tied_negatives(
        self, vector: NDArray[np.float32], scores: RouteScores, snapshot: Snapshot
    ) -> RouteScores:
        """``scores`` with the negative examples' route added when it ties with the
        best route but fell out of the ranking: a tie goes to it (``decide``, as the
        fit counts it), but ties rank by position, so a negative example that is the
        utterance of more routes than k was not seen. Only a ranking whose every route
        ties with the best can have lost it; then that route alone is scored (its
        rows, not the index's again)."""
        if (
            not len(scores.route_ids)
            or scores.scores[-1] < scores.scores[0] - NEGATIVE_TIE
            or negative_first(scores, snapshot)
        ):
            return scores
        alone = snapshot.route_score(vector, NEGATIVES_ROUTE)
        if alone is None or alone.scores[0] < scores.scores[0] - NEGATIVE_TIE:
            return scores
        return RouteScores(
            np.concatenate([scores.route_ids, alone.route_ids]),
            np.concatenate([scores.scores, alone.scores]),
            np.concatenate([scores.nearest_rows, alone.nearest_rows]),
            scores.knn,
        )

    def _snapshot_and_policy(self) -> tuple[Snapshot, DecisionPolicy]:
        """The compiled routes and the policy installed with them, without a lock.

        A change installs its routes (which drops the cached snapshot) and then its
        policy, in one ``changing()`` block. A cached snapshot is returned at once,
        so a change applied between the two reads paired the old routes with the new
        policy (a fitted head knowing a route the snapshot lacks). Read the policy on
        both sides of the snapshot: equal, they belong together.
        """
        while True:
            policy = self._policy
            snapshot = self._index.snapshot()
            if self._policy is policy:
                return snapshot, policy

    def _route_thresholds(self) -> Mapping[str, float | None]:
        return _OwnThresholds(self._routes)

    def query(self, text: str) -> RouteMatch:
        """Route one text. ``result.name`` is ``None`` when no route passes.

        An empty or whitespace-only text returns a no-match with
        ``reason="empty_query"`` without calling the model.

        Raises:
            TypeError: ``text`` is not a ``str``.
        """
        return cast(RouteMatch, self._answer([_Request(text)])[0])

    def __call__(self, text: str) -> RouteMatch:
        """Same as :meth:`query`."""
        return self.query(text)

    def query_batch(self, texts: Sequence[str]) -> list[RouteMatch]:
        """Route many texts with one encoder call; results in input order."""
        texts = _text_list(texts, "query_batch")
        return cast(list[RouteMatch], self._answer([_Request(t) for t in texts]))

    def query_top_k(
        self, text: str, k: int = 3, *, respect_negatives: bool = False
    ) -> list[RouteMatch]:
        """The ``k`` best routes for ``text``, best first, each judged against its threshold.

        Each element names its route; ``reason`` tells whether it passed. An empty
        text gives ``[]``. The negative examples are left out of the ranking, unless
        ``respect_negatives``: then a text nearer to a negative example than to every
        route gets one element, the no-route match :meth:`query` gives it
        (``reason="negative_example"``), from the same scoring.
        """
        request = _top_k_request(text, k, respect_negatives)
        return cast(list[RouteMatch], self._answer([request])[0])

    def query_top_k_batch(
        self, texts: Sequence[str], k: int = 3, *, respect_negatives: bool = False
    ) -> list[list[RouteMatch]]:
        """:meth:`query_top_k` for many texts with one encoder call; results in input order."""
        texts = _text_list(texts, "query_top_k_batch")
        k = check_count(k, "k", 1)  # an empty list too
        items = [_top_k_request(t, k, respect_negatives) for t in texts]
        return cast(list[list[RouteMatch]], self._answer(items))

    # -- async -----------------------------------------------------------------------
    def _worker_for(self, loop: asyncio.AbstractEventLoop) -> BatchWorker[_Request, _Answer]:
        """The batching worker of ``loop``, created on its first use."""
        with self._workers_lock:
            worker = self._loop_workers.get(loop)
            if worker is not None:
                return worker
            # Release the workers of loops closed without stop() (asyncio.run) that are
            # still referenced: their threads end now, not when the loop is collected.
            # (A dropped loop leaves this mapping by itself: a worker refers to its loop
            # only weakly, the loop holds what the worker runs on it.)
            for other, owned in list(self._loop_workers.items()):
                if other.is_closed():
                    del self._loop_workers[other]
                    owned.release()
            primary = self._worker
            # Free when no open loop holds it: one that took it may not have started it
            # yet (its first aquery is between this lookup and the start), and a loop
            # that stopped it may start it again. Taking it then handed one worker to
            # two loops (EventLoopMismatchError, or futures of another loop).
            held = any(owned is primary for owned in self._loop_workers.values())
            if primary.loop is loop or not (held or primary.running or primary.stopping):
                worker = primary
            else:
                worker = primary.sibling()
            self._loop_workers[loop] = worker
            return worker

    def _current_worker(self) -> BatchWorker[_Request, _Answer]:
        return self._worker_for(asyncio.get_running_loop())

    async def start(self) -> None:
        """Start the batching worker of the running event loop.

        Optional: the first :meth:`aquery` on a loop starts it too. Each event loop
        that queries the router gets its own worker (requests are batched with
        other requests of the same loop), so the router can be shared by threads
        that each run ``asyncio.run``. It also compiles the index in a thread (with
        its int8 copy), so the first query does not pay for it.
        """
        await self._current_worker().start()
        await asyncio.to_thread(self._index.snapshot)

    async def stop(self, *, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the running loop's worker; its pending calls get a result or :class:`RouterClosedError`.

        Args:
            drain: serve the queued calls first (otherwise they fail at once).
            timeout: seconds to wait for the queue to drain; the rest then fail.

        Workers of other event loops keep serving: each loop stops its own (a loop
        closed without ``stop()`` releases its worker by itself). The router can be
        started again afterwards.
        """
        check_timeout(timeout)  # also when this loop has no worker to stop
        with self._workers_lock:
            worker = self._loop_workers.get(asyncio.get_running_loop())
        if worker is not None:
            await worker.stop(drain=drain, timeout=timeout)

    async def aquery(self, text: str, *, timeout: float | None = None) -> RouteMatch:
        """Route one text through the batching worker; same result as :meth:`query`.

        Called before :meth:`start`, it starts the running loop's worker.

        Raises:
            TypeError: ``text`` is not a ``str``.
            InvalidInputError: ``text`` is not valid Unicode (a lone surrogate), costs
                more than ``max_queue_cost`` (it could never be queued), or a bad
                ``timeout``.
            RouterOverloadedError: the queue is full; nothing was queued.
            RouterTimeoutError: ``timeout`` seconds passed first.
            RouterClosedError: the router is stopping or was stopped meanwhile.
        """
        check_text(text)
        worker = self._current_worker()
        return cast(RouteMatch, await worker.submit_one(_Request(text), timeout))

    async def aquery_batch(
        self, texts: Sequence[str], *, timeout: float | None = None
    ) -> list[RouteMatch]:
        """Route many texts through the batching worker; results in input order.

        All texts are queued or none is (:class:`RouterOverloadedError`); they may be
        served in several batches, together with other callers' texts. Errors as
        :meth:`aquery`'s, and :class:`InvalidInputError` for a batch that could never
        be queued (more texts than ``max_queue_size``, or above ``max_queue_cost``).
        """
        texts = _text_list(texts, "aquery_batch")
        items = [_Request(check_text(t)) for t in texts]
        worker = self._current_worker()
        return cast(list[RouteMatch], await worker.submit(items, timeout))

    async def aquery_top_k(
        self,
        text: str,
        k: int = 3,
        *,
        timeout: float | None = None,
        respect_negatives: bool = False,
    ) -> list[RouteMatch]:
        """:meth:`query_top_k` through the batching worker, batched with other calls."""
        request = _top_k_request(text, k, respect_negatives)
        worker = self._current_worker()
        return cast(list[RouteMatch], await worker.submit_one(request, timeout))

    async def aquery_top_k_batch(
        self,
        texts: Sequence[str],
        k: int = 3,
        *,
        timeout: float | None = None,
        respect_negatives: bool = False,
    ) -> list[list[RouteMatch]]:
        """:meth:`query_top_k_batch` through the batching worker; all texts are queued
        or none is (:class:`RouterOverloadedError`), as with :meth:`aquery_batch`."""
        texts = _text_list(texts, "aquery_top_k_batch")
        k = check_count(k, "k", 1)  # an empty list too
        items = [_top_k_request(t, k, respect_negatives) for t in texts]
        worker = self._current_worker()
        return cast(list[list[RouteMatch]], await worker.submit(items, timeout))

    @property
    def worker(self) -> BatchWorker[_Request, _Answer]:
        """The batching worker of the running event loop (outside a loop: the first one).

        For metrics and tuning; ``max_batch_size`` and the other settings set on the
        first worker are copied to the workers of loops that come later.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._worker
        return self._worker_for(loop)

    def text_cost(self, text: str) -> int:
        """What ``text`` costs this router's batching queue, in characters the encoder
        reads (:func:`~synaptoroute.batching.text_cost` up to :attr:`text_cost_cap`):
        the measure of ``max_queue_cost`` and ``max_batch_cost``, for a caller that
        cuts a large batch into runs the queue can hold."""
        return text_cost(text, self.text_cost_cap)

    @property
    def workers(self) -> list[BatchWorker[_Request, _Answer]]:
        """The batching workers of every event loop that has used the router and is open."""
        with self._workers_lock:
            return [w for loop, w in self._loop_workers.items() if not loop.is_closed()]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def close(self) -> None:
        """Stop the index's background work, then close the storage. Stop the worker
        first if it runs.

        Does not wait for the background thread: a graph build ends before its next
        chunk of rows (about a second on 2 cores), a feed before its next row, and no
        graph build or feed or int8 copy starts again. Once ``close()`` returns the
        router replaces no cache file (``<store>.ann``): a write under way is
        discarded, and a graph whose build was stopped is not saved, so the next router
        opened on the store builds it again (``docs/scale.md``).
        """
        if any(worker.running for worker in self.workers):
            warnings.warn(
                "close() while the async worker runs; call await stop() first", stacklevel=2
            )
        self._index.close()
        self.storage.close()

    # -- replication: applying changes other replicas committed ----------------------
    # A store with a change feed (a WatchableStorage: PostgresStorage, and SQLiteStorage,
    # which polls for other connections' commits) has ``watch``; the router then follows
    # it and applies other replicas' changes here, from the vectors in the change,
    # without encoding and without writing back. Its own writes are applied by the
    # methods above and not delivered again.
    def _start_follower(self) -> None:
        if isinstance(self.storage, WatchableStorage):
            self.storage.watch(self._apply_changes, lock=self._lock, weak=True)

    def _policy_from_state(self, state: dict[str, Any]) -> DecisionPolicy:
        try:
            policy = self._read_policy(state)
        except (InvalidInputError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # Damaged outside the library (a head without its classes, a calibrator
            # without its points): a bare KeyError named neither the store nor a way out.
            msg = (
                f"the decision policy stored in {self.storage!r} is damaged "
                f"({type(exc).__name__}: {exc}); it was left as it is: restore a backup, "
                "or delete it to start from the defaults (storage.set_state('policy', None))"
            )
            raise StorageError(msg) from exc
        # Older versions stored NaN in info, which set_policy (every later change of
        # the policy, a route change's included) refuses: JSON has none.
        policy = _replace(policy, info=_finite_json(policy.info))
        fitted_on = policy.info.get("model")
        if policy.head is not None and policy.head.model_id != self.model.model_id:
            warnings.warn(
                f"the stored fitted head was trained on {policy.head.model_id!r} embeddings, "
                f"not {self.model.model_id!r}; it is ignored until the next fit()",
                stacklevel=_outside_the_package(),
            )
            policy = without_head(policy)
        elif fitted_on not in (None, self.model.model_id):
            # Thresholds and the calibrator are cuts on another model's scores: kept
            # (they may still route), but they no longer mean what the fit measured.
            warnings.warn(
                f"the stored policy was fitted on {fitted_on!r} scores, not "
                f"{self.model.model_id!r}; its thresholds and confidence calibration "
                "were kept, call fit() again",
                stacklevel=_outside_the_package(),
            )
        fitted = _fitted_scoring(policy.info)
        own = (self._index.aggregation, self._index.top_k)
        if fitted is not None and _scoring_name(*fitted) != _scoring_name(*own):
            # Cuts chosen on one aggregation's scores mean something else on another's
            # (a centroid's scores sit well below a max's): kept, but said.
            warnings.warn(
                f"the stored policy was fitted on {_scoring_name(*fitted)} scores, but this "
                f"router aggregates by {_scoring_name(*own)}: its thresholds, head and "
                "confidence calibration were kept and no longer mean what the fit "
                f"measured; open it with aggregation={fitted[0]!r}"
                + (f", top_k={fitted[1]}" if fitted[0] == "mean_topk" else "")
                + " (AdaptiveRouter.open, and so the CLI and the service, take the fitted "
                "one when they open the store: restart them), or call fit() again",
                stacklevel=_outside_the_package(),
            )
        return policy

    def _read_policy(self, state: dict[str, Any]) -> DecisionPolicy:
        if not isinstance(state, Mapping):
            msg = f"a mapping was expected, got {type(state).__name__}"
            raise TypeError(msg)
        try:
            return DecisionPolicy.from_state(state, self._default_policy)
        except InvalidInputError as exc:
            # 0.2's set_policy took a bool or a numeric string and its reader converted
            # them: such a store must still open, deciding as it did then.
            policy = DecisionPolicy.from_state(state, self._default_policy, lenient=True)
            warnings.warn(
                f"the stored decision policy holds values that are not numbers ({exc}), "
                "written by an older version: read as numbers, as that version did; the "
                "next change of the policy stores numbers",
                stacklevel=_outside_the_package(),
            )
            return policy

    def _apply_changes(self, changes: Sequence[Change]) -> None:
        """Apply committed changes in order (called by the store's follower thread)."""
        with self._lock:
            for change in changes:
                try:
                    self._apply_change(change)
                except Exception:
                    _log.exception("could not apply change %d (%s)", change.seq, change.kind)

    def _without_damage(self, change: Change) -> Change | None:
        """``change`` less the routes whose vectors are not finite numbers (damaged
        outside the library), logged; ``None`` when nothing of it is left to apply.

        Applied, a NaN made its route's every score NaN, read as no score: the route
        was never chosen again, and nothing said why (opening the store refuses it).
        This replica keeps what it had for those routes.
        """
        if change.vectors is not None and not np.isfinite(change.vectors).all():
            damaged = [change.name or ""]
        else:
            damaged = _damaged_routes(change.routes)
        if not damaged:
            return change
        _log.error(
            "change %d holds vectors that are not finite numbers (damaged outside the "
            "library) in route(s) %s: not applied to them, this replica keeps what it had; "
            "open the store with reencode=True to mend it",
            change.seq,
            ", ".join(repr(name) for name in damaged),
        )
        if change.kind == "reload":
            # A reload drops every route it lacks: as a resync of every route, but the
            # damaged ones, it leaves them as they are (and still resets a policy
            # the store no longer holds).
            names = [*self._routes, *(item.route.name for item in change.routes)]
            change = _replace(
                change,
                kind="resync",
                names=tuple(dict.fromkeys(names)),
                state={_POLICY_KEY: None, **change.state},
            )
        elif change.kind != "resync":
            return None
        return _without(change, set(damaged))

    def _apply_change(self, change: Change) -> None:
        if change.model is not None and change.model != self.model:
            _log.error(
                "change %d holds vectors of %r (dimension %d) but this router encodes with %r; "
                "they were not applied: restart this replica with the store's model",
                change.seq,
                change.model.model_id,
                change.model.dimension,
                self.model.model_id,
            )
            if change.kind != "resync":
                return
            # What holds no vector still applies: routes gone, routes without
            # utterances, the state (a resync of a SQLite poll carries all of them).
            refused = {item.route.name for item in change.routes if len(item.vectors)}
            change = _replace(_without(change, refused), model=None)
        mended = self._without_damage(change)
        if mended is None:
            return
        change = mended
        policy = self._policy
        state = change.state.get(_POLICY_KEY)
        if state is None and (change.kind == "reload" or _POLICY_KEY in change.state):
            # The store holds no policy (deleted, or a restored backup from before
            # one was set): the constructor's, as a router opened on it now has.
            policy = self._default_policy
        elif state is not None:
            # Read before the index changes: a policy that cannot be read (or a
            # warning made an error) must not leave the index and the routes apart.
            try:
                policy = self._policy_from_state(state)
            except Exception:
                _log.exception(
                    "change %d: the stored decision policy could not be read; the routes "
                    "were applied and the policy this replica had was kept",
                    change.seq,
                )
        with self._index.changing():  # a query compiling meanwhile sees both changed
            self._routes = apply_change(change, self._routes, self._index)
            self._policy = policy


def _reconciled(
    policy: DecisionPolicy, routes: Mapping[str, Route]
) -> tuple[DecisionPolicy, list[str]]:
    """``policy`` kept consistent with ``routes`` (:func:`policy_for_routes`) and the
    notes on what it dropped."""
    # A fitted head knows a fixed set of routes; see docs/accuracy.md.
    if policy.head is None and not policy.thresholds:
        return policy, []  # nothing fitted: adds stay O(1) in the routes
    # A route without utterances scores nothing: no new class of a head.
    scored = [n for n, r in routes.items() if r.utterances and n != NEGATIVES_ROUTE]
    names = [n for n in routes if n != NEGATIVES_ROUTE]
    return policy_for_routes(policy, names, scored)


def _finite_json(value: Any) -> Any:
    """``value`` (JSON) with every NaN or infinite number replaced by ``None`` (JSON
    has none; PostgreSQL refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


#: How far past the score range a threshold may lie: a fitted cut "none pass" sits
#: just above the largest score (synaptoroute.fitting.cuts).
_CUT_SLACK = 1e-3


def _check_policy(policy: DecisionPolicy) -> None:
    low, high = SCORE_MIN - _CUT_SLACK, SCORE_MAX + _CUT_SLACK
    named = {
        "threshold": policy.threshold,
        **{f"thresholds[{k!r}]": v for k, v in policy.thresholds.items()},
    }
    for field_name, value in named.items():
        if not low <= value <= high:
            msg = f"policy {field_name} must be in [{SCORE_MIN}, {SCORE_MAX}], got {value!r}"
            raise InvalidInputError(msg)
    if not 0.0 <= policy.min_margin <= 2.0:
        msg = f"policy min_margin must be in [0, 2], got {policy.min_margin!r}"
        raise InvalidInputError(msg)
    try:
        # No NaN or infinity: PostgreSQL's JSON refuses them, so every back end does.
        json.dumps(dict(policy.info), allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"policy info must be JSON (str, finite numbers, lists, dicts): {exc}"
        raise InvalidInputError(msg) from None


class _Request(NamedTuple):
    """One query for :meth:`AdaptiveRouter._answer`."""

    text: str
    top_k: int | None = None  # None: one decision (query); k: the k best routes
    negatives: bool = False  # a ranking: the decision instead when a negative example is first


#: What :meth:`AdaptiveRouter._answer` gives a request: a decision, or the k best routes.
_Answer = RouteMatch | list[RouteMatch]


def _damaged_routes(stored: Iterable[StoredRoute]) -> list[str]:
    """The names of the stored routes holding a vector that is not finite."""
    return [item.route.name for item in stored if not np.isfinite(item.vectors).all()]


def _without(change: Change, refused: set[str]) -> Change:
    """``change`` less what it holds of the routes ``refused`` (a replica keeps what it
    had for them)."""
    return _replace(
        change,
        routes=tuple(item for item in change.routes if item.route.name not in refused),
        names=tuple(name for name in change.names if name not in refused),
        moved=tuple(name for name in change.moved if name not in refused),
    )


def _with_vectors(routes: Sequence[Route], vectors: NDArray[np.float32]) -> list[StoredRoute]:
    """Each route with its rows of ``vectors`` (one row per utterance, routes in order)."""
    stored, start = [], 0
    for route in routes:
        end = start + len(route.utterances)
        stored.append(StoredRoute(route, vectors[start:end]))
        start = end
    return stored


def _request_cost(request: _Request, cap: int) -> int:
    return text_cost(request.text, cap)


def _top_k_request(text: str, k: int, respect_negatives: bool = False) -> _Request:
    return _Request(check_text(text), check_count(k, "k", 1), bool(respect_negatives))


def _each_route(
    scores: RouteScores,
    snapshot: Snapshot,
    policy: DecisionPolicy,
    thresholds: Mapping[str, float | None],
) -> list[RouteMatch]:
    """Every ranked route judged by its own threshold, each named after its route: as
    the threshold rule would judge it were the routes ranked above it gone (its margin
    is to the route ranked next). No head and no negative example take part (``scores``
    hold none: the caller left them out)."""
    out = []
    for pos in range(len(scores.route_ids)):
        rotated = RouteScores(
            scores.route_ids[pos:], scores.scores[pos:], scores.nearest_rows[pos:]
        )
        match = decide(rotated, snapshot, policy, thresholds, negatives=False)
        out.append(match.model_copy(update={"name": match.candidate}))
    return out


class _OwnThresholds(Mapping[str, "float | None"]):
    """Each route's own threshold, read through (decide() looks up one name per query;
    copying every route's threshold per query cost ~0.7 ms at 1,000 routes)."""

    __slots__ = ("_routes",)

    def __init__(self, routes: dict[str, Route]) -> None:
        self._routes = routes

    def __getitem__(self, name: str) -> float | None:
        return self._routes[name].threshold

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes.copy())

    def __len__(self) -> int:
        return len(self._routes)


def _fitted_scoring(info: Mapping[str, Any]) -> tuple[Aggregation, int] | None:
    """The aggregation (and ``mean_topk``'s k) a stored fit chose its cuts on; ``None``
    for a policy that records none (set by hand, or fitted before 0.3)."""
    aggregation = info.get("aggregation")
    if aggregation in ("max", "centroid"):
        return cast("Aggregation", aggregation), 3
    k = info.get("aggregation_top_k")
    if aggregation == "mean_topk" and type(k) is int and k >= 1:
        return "mean_topk", k
    return None


def _scoring_name(aggregation: Aggregation, top_k: int) -> str:
    return f"'mean_topk' (top_k={top_k})" if aggregation == "mean_topk" else repr(aggregation)


def _ann_options(
    index: str,
    threshold: int,
    cache: str | os.PathLike[str] | Literal[False] | None,
    aggregation: str,
    storage: Storage,
    depth: int,
    margin: float = CLOSE_MARGIN,
) -> dict[str, Any]:
    """RouteIndex arguments for the router's ``index``/``ann_*`` options."""
    if index not in ("auto", "exact", "ann"):
        msg = f"index must be 'auto', 'exact' or 'ann', got {index!r}"
        raise InvalidInputError(msg)
    threshold = check_count(threshold, "ann_threshold", 1)
    depth = check_count(depth, "ann_depth", 16)
    if not is_number(margin) or not 0.0 <= float(margin) < 1.0:
        msg = f"ann_margin must be a number in [0, 1), got {margin!r}"
        raise InvalidInputError(msg)
    if index == "exact" or (index == "auto" and aggregation != "max"):
        return {}
    if aggregation != "max":
        msg = "index='ann' needs aggregation='max'"
        raise InvalidInputError(msg)
    if index == "ann":
        from .ann import load_usearch

        load_usearch()  # AnnUnavailableError (an ImportError) says how to install it
    # With "auto" and no library, the first build logs a warning and stays exact.
    store = None
    if isinstance(storage, SQLiteStorage) and storage.path != ":memory:":
        store = Path(storage.file)  # absolute: a later chdir does not move the cache
        if cache is None:
            cache = store.with_name(store.name + ".ann")
    return {
        "ann_min_rows": 1 if index == "ann" else threshold,
        "ann_cache": cache if cache is not False else None,
        "ann_cache_mode_of": store,
        "ann_depth": depth,
        "ann_margin": float(margin),
    }


def _text_list(texts: Iterable[str], method: str) -> list[str]:
    """The texts of a batch call as a list; a str or bytes (whose items are letters or
    ints) or no collection at all is refused, naming ``method``."""
    if isinstance(texts, str | bytes | bytearray | memoryview):
        msg = f"{method} takes a list of texts, not a {type(texts).__name__}"
        raise TypeError(msg)
    try:
        return list(texts)
    except TypeError:
        msg = f"{method} takes a list of texts, got {type(texts).__name__}"
        raise TypeError(msg) from None


def _check_encoder(encoder: object) -> None:
    """Refuse an encoder without a usable ``model_id`` or ``dimension`` when the router
    is made: a ``None`` id failed its first write as a store outage, an int id was
    stored as text and then refused the same encoder at reopening.

    Raises:
        InvalidInputError: ``model_id`` is not a non-empty ``str`` of valid Unicode, or
            ``dimension`` not a positive int.
    """
    kind = type(encoder).__name__
    # The store records it: the encoders' own check (a lone surrogate failed the
    # store's first write, naming neither).
    _check_model_id(getattr(encoder, "model_id", None), f"the encoder ({kind})'s model_id")
    dimension = getattr(encoder, "dimension", None)
    if isinstance(dimension, bool) or not isinstance(dimension, int | np.integer) or dimension < 1:
        msg = f"the encoder ({kind}) needs a dimension, a positive int, got {dimension!r}"
        raise InvalidInputError(msg)


def _returns_new_arrays(encoder: object) -> bool:
    """Whether ``encoder`` is one of the library's, which return a new array per call."""
    while type(encoder) is EncoderWrapper:
        encoder = encoder.inner
    return type(encoder) in (Encoder, CallableEncoder, HashingEncoder)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# How far an encoder's row may be from unit length, in squared norm: float32
# normalisation is off by about 1e-7, rows normalised in bfloat16 by up to about 3e-3;
# a model that does not normalise, by far more (norms of several units).
_UNIT_TOLERANCE = 1e-2


def _outside_the_package() -> int:
    """The ``stacklevel`` that makes a warning raised by this function's caller name the
    first frame outside synaptoroute: the user's call, however many of the library's
    own frames lie between (``add_route`` calls ``add_routes``; the service deeper)."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def _new_texts(candidates: list[str], held: Iterable[str]) -> list[str]:
    """The candidates that no held text equals under NFC (:func:`utterance_key`)."""
    keys = {utterance_key(t) for t in held}
    return [t for t in candidates if utterance_key(t) not in keys]


def _named_keys(texts: Iterable[object]) -> set[str]:
    """The NFC keys of the texts a delete names (stripped; a non-string names none)."""
    return {utterance_key(t.strip()) for t in texts if isinstance(t, str)}


def _not_a_str(values: object, method: str) -> None:
    # A str is a sequence too: "hello" would become five one-letter utterances.
    if isinstance(values, str):
        msg = f"{method} takes a list of utterances, not a str"
        raise TypeError(msg)


def stop_workers_soon(router: AdaptiveRouter) -> None:
    """Stop ``router``'s batching worker on each event loop that runs one, from any
    thread and without waiting: ``stop()`` is scheduled on that loop, to run when it
    next runs. For caches that drop a router other loops may still have a worker for
    (each worker is a thread a long-lived loop would otherwise keep)."""
    for worker in router.workers:
        loop = worker.loop
        if not worker.running or loop is None:
            continue
        stopping = router.stop()
        try:
            asyncio.run_coroutine_threadsafe(stopping, loop)
        except RuntimeError:  # the loop closed meanwhile: its worker is gone with it
            stopping.close()


class RouterCache(Generic[_K, _RT]):
    """Routers by key, least recently used first, with the async calls under way on
    each: the cache of the integrations that build a router per choice set or question.

    A router dropped from use (evicted past the owner's size, or retired by it) has its
    batching workers stopped at once when no async call is under way on it, else by
    the last such call's :meth:`release`: each worker is a thread a long-lived event
    loop would otherwise keep. A dropped router that may still run a worker is kept
    for :meth:`aclose`.

    The locks are the owner's (``lock`` may guard more of its state; it registers
    both with :func:`~synaptoroute.forking.hold_across_fork`). ``lock`` is never held
    around a router call: :meth:`get`, :meth:`build`, :meth:`release`,
    :meth:`routers` and :meth:`aclose` take it; :meth:`retire` and :meth:`clear` are
    called with it held. ``build_lock`` serialises builds, so that concurrent first
    calls of one key make its router once.
    """

    def __init__(self, lock: threading.Lock, build_lock: threading.Lock) -> None:
        self.lock = lock
        self.build_lock = build_lock
        self._routers: OrderedDict[_K, _RT] = OrderedDict()
        self._retired: list[_RT] = []
        self._busy: dict[_RT, int] = {}

    def __len__(self) -> int:
        return len(self._routers)

    def get(self, key: _K, *, busy: bool = False) -> _RT | None:
        """The router of ``key`` (now the most recently used), or ``None``; ``busy``:
        count an async call under way on it (:meth:`release` ends it)."""
        with self.lock:
            router = self._routers.get(key)
            if router is not None:
                self._routers.move_to_end(key)
                if busy:
                    self._busy[router] = self._busy.get(router, 0) + 1
            return router

    def routers(self) -> list[_RT]:
        """The cached routers, least recently used first."""
        with self.lock:
            return list(self._routers.values())

    def build(
        self,
        key: _K,
        make: Callable[[], _RT],
        *,
        size: int,
        busy: bool = False,
        keep: Callable[[], bool] | None = None,
    ) -> _RT:
        """The router of ``key``: cached, or made by ``make()`` unless another call
        made it meanwhile, and cached; the least recently used past ``size`` routers
        are retired. ``busy``: count an async call under way on it, before any other
        build can evict it. ``keep``: asked under ``lock`` once the router is made,
        whether to cache it (``False``: it serves the call that made it, then retires).
        """
        with self.build_lock:
            router = self.get(key, busy=busy)
            if router is not None:
                return router
            router = make()
            with self.lock:
                if busy:
                    self._busy[router] = 1
                if keep is not None and not keep():
                    self.retire(router)
                    return router
                self._routers[key] = router
                while len(self._routers) > size:
                    self.retire(self._routers.popitem(last=False)[1])
        return router

    def clear(self) -> None:
        """Retire every cached router (under ``lock``)."""
        while self._routers:
            self.retire(self._routers.popitem(last=False)[1])

    def retire(self, router: _RT) -> None:
        """Drop ``router`` from use (under ``lock``; it is no longer cached): its
        workers stopped now unless an async call is under way on it."""
        self._retired = [r for r in self._retired if _runs_a_worker(r) or r in self._busy]
        self._retired.append(router)
        if router not in self._busy:
            stop_workers_soon(router)

    def release(self, router: _RT) -> None:
        """One async call on ``router`` is done: the last one on a router retired
        meanwhile stops its workers."""
        with self.lock:
            left = self._busy.pop(router) - 1
            if left:
                self._busy[router] = left
            elif any(r is router for r in self._retired):
                stop_workers_soon(router)

    async def aclose(self) -> None:
        """Stop the running loop's workers of every router, cached or retired; a
        retired router is forgotten once no event loop runs a worker of it (one whose
        worker runs on another loop is kept for that loop's ``aclose()``)."""
        with self.lock:
            retired = list(self._retired)
            routers = [*retired, *self._routers.values()]
        for router in routers:
            await router.stop()
        with self.lock:
            # Routers retired meanwhile are left to the retirement's own rule.
            self._retired = [
                r
                for r in self._retired
                if _runs_a_worker(r) or r in self._busy or not any(r is old for old in retired)
            ]


def _runs_a_worker(router: AdaptiveRouter) -> bool:
    return any(worker.running for worker in router.workers)


async def counted_build(build: Callable[[], _R], release: Callable[[_R], None]) -> _R:
    """Await ``build()`` run in a thread, for caches that count the async calls under
    way on each router: ``build`` returns a router (cached or made) with this call
    already counted on it, so that no other call can stop its workers in between.

    If the awaiting call is cancelled, the build goes on in its thread and its count
    is released by whichever of the two ends second: the task that runs the thread
    may itself be cancelled (``asyncio.run``'s teardown), so no callback of it can.
    """
    lock = threading.Lock()
    abandoned = False
    made: list[_R] = []

    def run() -> _R:
        router = build()
        with lock:
            made.append(router)
            gone = abandoned
        if gone:
            release(router)
        return router

    try:
        return await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(run)))
    except asyncio.CancelledError:
        with lock:
            abandoned = True
            built = made[:]
        for router in built:
            release(router)
        raise
