"""Approximate nearest-neighbour search past a size: an HNSW graph from ``usearch``.

Optional (extra ``ann``: ``pip install '.[ann]'`` in a checkout). :class:`~synaptoroute.index.RouteIndex`
uses it for the ``"max"`` aggregation once it holds ``ann_min_rows`` rows; below that,
or without the library, it scores exactly (see ``docs/scale.md``).

The graph stores each row once, as int8 codes in usearch (compared by cosine), keyed
by its row number in the index's float32 matrix. It proposes candidate rows; the index
re-scores them in float32 and answers from the graph only when the result is certified
by the candidate horizon (:func:`candidate_routes`) and the search was not lost: a
search whose every proposed row scores below the best of a sample of the graph's rows
(:meth:`AnnGraph.sample_stats`) settled in the wrong region, and gets a deeper round
(:func:`rounds_for`); a first round whose best row barely stands out from that sample
(:data:`HARD_CONTRAST`) is confirmed by the second round. Otherwise the query takes
the exact path. Rows added after the graph was built are fed into it by a background
thread one at a time (:data:`FEED_CHUNK`; in bulk past :data:`FEED_TAIL_MAX`), and are
scored exactly until they are in.
usearch calls are serialised by one lock: the library does not promise that a search
is safe while another thread inserts.

Why one module over 400 lines: the graph's settings, its search rounds, the sample
that tells lost and hard searches, the certification of its candidates and the key of
its cache file are one contract with :class:`~synaptoroute.index.Snapshot`; each part
reads the others' constants, and usearch is imported in one place.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import stat
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._cpu import process_cpus
from ._fork import GRAPH, LEAF, hold_across_fork
from .exceptions import MissingDependencyError, install_hint

__all__ = [
    "AnnGraph",
    "AnnUnavailableError",
    "ReadGate",
    "candidate_routes",
    "content_key",
    "load_usearch",
    "rounds_for",
]

# HNSW settings: 32 links per node and a construction depth of 256. With 16 and 64
# the graph missed the winning route of noisy copies of real embeddings too often
# (tests/test_ann.py); on real text the searches of a graph built at depth 128 missed
# the query's nearest row about twice as often as at 256, and a certified answer
# missing that row is wrong (BENCHMARKS.md, "Construction depth"). A deeper
# construction costs build and feed time (about 2x), and at 100,000 rows about 1.4x
# per search at the same depth (more of each node's links filled). The certification
# (candidate_routes) turns the remaining misses into exact fallbacks.
CONNECTIVITY = 32
EXPANSION_ADD = 256
# The first search depth (HNSW ef) unless the router's ``ann_depth`` says otherwise:
# deeper finds the winning route more often, and costs more (rounds_for). On real text
# at 1M, 256 reached the 99.9% agreement that 128 misses (99.77%), for 1.6x the p50
# (same day): the search is most of a query there, so the default keeps the time
# (BENCHMARKS.md, "Real text at 1M").
DEFAULT_DEPTH = 128
# Best two routes closer than this: the decision is scored exactly (the default of
# the router's ``ann_margin`` and ``Snapshot.ann_margin``). On real text it buys
# 0.03-0.1 points of agreement for about 10% of queries scored exactly (BENCHMARKS.md,
# "The close margin" and "The margin again").
CLOSE_MARGIN = 0.02
# Rows of candidate routes re-scored in full per query, beyond the first k routes.
RESCORE_BUDGET = 4096
# Rows fed into a serving graph per lock hold: a query waits for one such chunk at
# most, and inserting a row into a large graph costs about what one or two searches
# do, so one row at a time (BENCHMARKS.md: queries during a feed).
FEED_CHUNK = 1
# Seconds a feed waits for reads in flight (ReadGate) before it inserts its next row
# anyway.
FEED_YIELD = 0.005
# Rows per insertion call of a build: a build told to stop (the interpreter exits)
# ends within one such call (about a second on 2 cores).
BUILD_CHUNK = 8192
# Rows a serving graph may lack. Past this a query scores exactly: re-scoring them in
# every search round costs more than the int8 scan. The feed then inserts them this
# many at a time with every thread, as a build does (no query searches the graph
# meanwhile): one row at a time, the rows a store gained since the cache file was
# written took minutes under load, at every start. And a feed that has inserted as
# many (and an eighth of the file's) since the file was written saves it again.
FEED_TAIL_MAX = 2048
# 5: the key holds the graph file's SHA-256 (4: the file's inode, size and time only;
# 3: SHA-256 keys of row blocks; 2: blake2b keys; 1: float16 vectors)
_FORMAT = 5
# Rows per hashed block of the content key (part of the key: changing it is a format change).
_KEY_BLOCK = 65_536
# Rows of the graph kept aside (one in LOST_EVERY, evenly spaced, at most LOST_SAMPLE)
# to tell a lost search: when every row the graph proposes scores below the best of
# these, the search settled in the wrong region, and certification cannot see it
# because the candidates look like a clear answer. At most 6 MB of float32, one product
# per query (BENCHMARKS.md, "Lost searches": 100 lost rounds in 3,000 queries at 1M).
LOST_EVERY = 64
LOST_SAMPLE = 4096
# The search depth of the round a lost search gets (at least this many, and 8x the
# first round's): deep enough to find the region again in most lost searches.
LOST_DEPTH = 1024
# A first round whose best row stands fewer than this many deviations above the mean
# similarity of the lost-search sample (AnnGraph.sample_stats) gets the second round
# even when its answer is certified: such queries lie in sparse regions, where the
# graph misses the nearest rows most often and the candidates still look like a clear
# answer (BENCHMARKS.md, "Hard queries get the second round"). 0 turns it off.
HARD_CONTRAST = 6.0
#: The position in :func:`rounds_for` of the round that runs only for a lost search.
LOST_ROUND = 2


class AnnUnavailableError(MissingDependencyError):
    """The approximate back end was asked for but ``usearch`` is not installed.

    A :class:`~synaptoroute.exceptions.MissingDependencyError`, so a
    :class:`~synaptoroute.exceptions.SynaptorouteError` and an ``ImportError``.
    """


def load_usearch() -> ModuleType:
    """Import ``usearch.index``, or raise :class:`AnnUnavailableError` with the fix.

    onnxruntime is imported first: loading usearch's extension before onnxruntime's
    makes the later onnxruntime import crash the process (usearch 2.26, onnxruntime
    1.32 on Linux), and the router needs onnxruntime anyway.

    Returns:
        The ``usearch.index`` module.

    Raises:
        AnnUnavailableError: usearch cannot be imported.
    """
    importlib.import_module("onnxruntime")
    try:
        return importlib.import_module("usearch.index")
    except ImportError as exc:
        msg = f"the approximate index needs usearch: {install_hint('ann')} (or pass index='exact')"
        raise AnnUnavailableError(msg) from exc


def content_key(rows: NDArray[np.float32], pool: Executor | None = None) -> str:
    """A digest of ``rows`` in order: the cache file's key.

    It covers every vector and its position, so any change a replica made to the
    stored rows that the graph covers (a delete, a replaced route, another model)
    gives another key, while rows appended after them keep the key of the prefix.
    SHA-256 (CPUs' SHA extensions make it faster than BLAKE2 on most x86 and ARM
    machines) of fixed blocks of rows, hashed in ``pool``'s threads when given, so
    the key of a million rows does not hold up a start-up from the cache file.

    Args:
        rows: the float32 rows the graph was built over.
        pool: threads to hash the blocks in (hashlib releases the GIL).

    Returns:
        A hex digest.
    """

    def block(start: int) -> bytes:
        part = np.ascontiguousarray(rows[start : start + _KEY_BLOCK])
        return hashlib.sha256(part.data).digest()

    starts = range(0, len(rows), _KEY_BLOCK)
    digests = pool.map(block, starts) if pool is not None else map(block, starts)
    digest = hashlib.sha256(f"{rows.shape[1]}:{len(rows)}:".encode())
    for part in digests:
        digest.update(part)
    return digest.hexdigest()


def _new_graph(ndim: int) -> Any:
    # int8 codes with the cosine metric: usearch scales each unit vector by 127, and
    # cosine on the codes undoes the norm the rounding loses (the inner product of
    # the codes does not, and its scores stray by about 0.1). Measured at 100,000
    # noisy copies of real embeddings (BENCHMARKS.md): the same route agreement as
    # float16 vectors, a search about 1.4x faster, and 0.67 kB less per utterance.
    return load_usearch().Index(
        ndim=ndim,
        metric="cos",
        dtype="i8",
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=DEFAULT_DEPTH,
    )


def _read_graph(path: Path, ndim: int, digest: object) -> Any:
    # Checked before usearch reads it: a graph file whose bytes changed (bit rot, a
    # crash before they reached the disk) crashed the process in its first search,
    # at every start, where its size and times still matched the key.
    if _digest(path) != digest:
        msg = f"{path} is not the graph file its key was written for (its SHA-256 differs)"
        raise ValueError(msg)
    graph = _new_graph(ndim)
    graph.load(str(path))
    return graph


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


#: A temporary graph file older than this is a killed writer's (a save writes its
#: files in seconds, minutes on a slow disk at a million rows).
LEFTOVER_AGE_S = 3600.0


def _temporary_files(path: Path) -> tuple[Path, Path]:
    """This writer's temporary graph and key files for ``path``: unique per writer, so
    two routers of one process on one store never share one."""
    stem = f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}"
    return path.with_name(stem + ".tmp"), path.with_name(stem + ".json.tmp")


def _sweep_leftovers(path: Path) -> None:
    """Remove the :func:`_temporary_files` of ``path`` (any writer's) not modified for
    :data:`LEFTOVER_AGE_S`: their writer was killed (SIGKILL, the OOM killer, a power
    cut: its ``finally`` never ran). Judged by age, not by the writer's pid: a folder
    on a network share is written from several hosts."""
    import re
    import time

    pattern = re.compile(re.escape(path.name) + r"\.\d+\.[0-9a-f]{32}(?:\.json)?\.tmp")
    cutoff = time.time() - LEFTOVER_AGE_S
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                continue  # gone already (another router's sweep), or not ours to remove


def _flush_to_disk(path: Path) -> None:
    # Before the rename that publishes it: renamed first, a power loss can leave the
    # new name on a file whose bytes never reached the disk. Best effort: Windows
    # needs a writable handle, and some network filesystems refuse fsync; a file
    # whose bytes did not arrive is refused at load by its SHA-256 anyway.
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Read(AbstractContextManager[None]):
    """A read of a :class:`ReadGate` as a ``with`` block: a class, not a generator,
    since every query enters one or two (a generator's context costs about a
    microsecond more each)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ReadGate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        self._gate._enter()

    def __exit__(self, *exc: object) -> None:
        self._gate._leave()


class ReadGate:
    """Reads of a graph in flight: a feed inserts its next row only when none is, or
    after :data:`FEED_YIELD`.

    A search enters the gate while it waits for and holds the graph's lock. The index
    shares its gate with its graph and enters it for a whole query, compile included:
    a feed started by that compile, or one already running, then inserts no row
    between the query's search rounds or beside its re-scoring, unless the query
    outlasts :data:`FEED_YIELD` (BENCHMARKS.md, "A feed waits for whole queries").
    """

    def __init__(self) -> None:
        # Reads in flight, by thread: a forked child keeps only its own thread's.
        self._by_thread: dict[int, int] = {}
        self._turn = threading.Condition(threading.Lock())
        self._read = _Read(self)  # stateless: one for every read
        hold_across_fork(self, LEAF, lock="_turn", in_child="_forked")

    @property
    def readers(self) -> int:
        """Reads in flight now."""
        return sum(self._by_thread.values())

    def reading(self) -> AbstractContextManager[None]:
        """Count a read in flight for the ``with`` block (reentrant: it counts)."""
        return self._read

    def _enter(self) -> None:
        me = threading.get_ident()
        with self._turn:
            self._by_thread[me] = self._by_thread.get(me, 0) + 1

    def _leave(self) -> None:
        me = threading.get_ident()
        with self._turn:
            left = self._by_thread.pop(me) - 1
            if left:
                self._by_thread[me] = left
            if not self._by_thread:  # a waiting feed wakes only when it may go
                self._turn.notify_all()

    def _forked(self) -> None:
        # In a forked child, under _turn: the other threads' reads never end there.
        me = threading.get_ident()
        mine = self._by_thread.get(me, 0)
        self._by_thread = {me: mine} if mine else {}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no read is in flight, at most ``timeout`` seconds.

        Returns:
            ``True`` if none was in flight when it returned.
        """
        with self._turn:
            return self._turn.wait_for(lambda: not self._by_thread, timeout=timeout)


class AnnGraph:
    """An HNSW graph over the first :attr:`covered` rows of one index generation.

    Args:
        graph: a ``usearch.index.Index`` whose keys are row numbers.
        rows: the leading rows it holds (row ``i`` under key ``i``); a sample of them
            is kept to tell lost and hard searches (:meth:`sample_stats`).
        sample: the most rows in that sample (one in :data:`LOST_EVERY` below it).
        gate: the reads a feed defers to (:class:`ReadGate`); a new one by default.
    """

    def __init__(
        self,
        graph: Any,
        rows: NDArray[np.float32],
        sample: int = LOST_SAMPLE,
        gate: ReadGate | None = None,
    ) -> None:
        covered = len(rows)
        size = min(sample, -(-covered // LOST_EVERY))
        picks = np.linspace(0, covered - 1, size).round().astype(np.int64)
        self._sample = np.ascontiguousarray(rows[picks], dtype=np.float32)
        self._graph = graph
        self._lock = threading.Lock()
        hold_across_fork(self, GRAPH)  # held for one search, insert or save
        # A feed lets reads go first: a row inserted into a large graph takes about as
        # long as a search.
        self.gate = gate if gate is not None else ReadGate()
        #: Leading rows in the graph; grows as the feeder inserts rows.
        self.covered = covered

    @classmethod
    def build(
        cls,
        rows: NDArray[np.float32],
        threads: int,
        stop: Callable[[], bool] | None = None,
        gate: ReadGate | None = None,
    ) -> AnnGraph | None:
        """Build a graph over ``rows`` (keys ``0..len(rows)-1``), :data:`BUILD_CHUNK`
        rows at a time.

        Args:
            rows: unit-norm float32 vectors.
            threads: usearch worker threads for the build.
            stop: asked before each chunk; when it says ``True`` the build ends.
            gate: the graph's :class:`ReadGate`.

        Returns:
            The graph, or ``None`` if ``stop`` ended the build.
        """
        graph = _new_graph(rows.shape[1])
        for start in range(0, len(rows), BUILD_CHUNK):
            if stop is not None and stop():
                return None
            end = min(start + BUILD_CHUNK, len(rows))
            graph.add(np.arange(start, end, dtype=np.uint64), rows[start:end], threads=threads)
        return cls(graph, rows, gate=gate)

    def search(
        self, query: NDArray[np.float32], count: int, depth: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Candidate rows for ``query``, best first (at most ``count``).

        Args:
            query: a unit-norm float32 vector.
            count: rows to return.
            depth: the search depth (HNSW ``ef``).

        Returns:
            Row numbers and the graph's (int8 cosine) similarities of those rows.
        """
        with self.gate.reading(), self._lock:
            self._graph.expansion_search = depth
            matches = self._graph.search(query, count, threads=1)
        keys = np.asarray(matches.keys, dtype=np.int64)
        return keys, (1.0 - np.asarray(matches.distances, dtype=np.float32))

    def sample_stats(self, queries: NDArray[np.float32]) -> NDArray[np.float32]:
        """Each query's best, mean and standard deviation of similarity over the
        graph's sample of its rows.

        The best is the query's floor: a search whose proposed rows all score below it
        did not reach the query's region of the graph (a row the graph holds beats
        everything it returned). The mean and deviation tell how far a found row stands
        out from the rows at large: a best row few deviations above the mean marks a
        query in a sparse region, where searches miss the nearest rows most often
        (:data:`HARD_CONTRAST`).

        Args:
            queries: unit-norm float32 vectors, shape ``(m, dim)``.

        Returns:
            Shape ``(m, 3)``: best, mean, deviation (``-inf``, 0, 0 for an empty graph).
        """
        size = len(self._sample)
        if not size:
            return np.tile(np.array([-np.inf, 0.0, 0.0], dtype=np.float32), (len(queries), 1))
        # A matrix-vector product per query: OpenBLAS packs the whole sample for a
        # product over several queries, which costs more than it saves in small batches.
        # Each numpy call counts: the graph's search has just evicted numpy's own code
        # and data from the caches, so a call costs several microseconds here.
        out = []
        for query in queries:
            sims = self._sample @ query
            mean = float(sims.sum()) / size
            spread = max(float(sims @ sims) / size - mean * mean, 0.0) ** 0.5
            out.append((float(sims.max()), mean, spread))
        return np.array(out, dtype=np.float32).reshape(len(queries), 3)

    @property
    def sample_rows(self) -> int:
        """Rows in the sample :meth:`sample_stats` scores (a float32 product per query)."""
        return len(self._sample)

    def feed(self, rows: NDArray[np.float32], start: int, threads: int = 1) -> bool:
        """Insert ``rows`` as rows ``start..`` if ``start`` is the next uncovered row.

        Args:
            rows: at most a chunk of vectors.
            start: the row number of ``rows[0]``.
            threads: usearch worker threads for the insertion.

        Returns:
            False when ``start`` is stale (another feed got there first).
        """
        self.gate.wait_idle(FEED_YIELD)  # reads first; a stream of them delays a feed boundedly
        with self._lock:  # usearch grows its capacity inside add: never during a search
            if start != self.covered:
                return False
            keys = np.arange(start, start + len(rows), dtype=np.uint64)
            self._graph.add(keys, rows, threads=threads)
            self.covered = start + len(rows)
            return True

    @property
    def memory_bytes(self) -> int:
        """Bytes usearch holds for the graph and its int8 vectors, and the sample's."""
        with self._lock:
            return int(self._graph.memory_usage) + self._sample.nbytes

    def save(
        self,
        path: Path,
        key: str,
        stop: Callable[[], bool] | None = None,
        lock: AbstractContextManager[Any] | None = None,
        mode_of: Path | None = None,
    ) -> bool:
        """Write the graph and its key next to each other, each replaced atomically.

        The key names the graph file it belongs to (its inode, size, modification
        time and SHA-256), so a graph whose key was never written (a writer stopped
        between the two replacements, or another writer's graph), or whose bytes
        changed since, is not taken for this one.

        Args:
            path: the graph file; its key goes to ``path`` + ``.json``.
            key: :func:`content_key` of the covered rows.
            stop: asked before the graph is written and again, holding ``lock``, before
                the files are replaced; when it says ``True`` nothing is replaced (the
                files written so far are removed).
            lock: held while ``stop`` is asked the second time and the files are
                replaced: whoever makes ``stop`` say ``True`` and then takes ``lock``
                knows that this call replaces no file afterwards (the router's
                ``close()``).
            mode_of: a file whose permission bits (less any execute bit) both files
                take (the store's: the graph holds its vectors, and a private store got a
                world-readable copy of them); else the process's umask decides.

        Returns:
            ``True`` if the files were replaced, ``False`` if ``stop`` said ``True``.

        Raises:
            OSError: a file could not be written (usearch's errors included).
        """
        if stop is not None and stop():
            return False
        tmp, meta_tmp = _temporary_files(path)
        try:
            with self._lock:
                covered = self.covered
                try:
                    self._graph.save(str(tmp))
                except RuntimeError as exc:  # usearch reports I/O failures so
                    raise OSError(f"could not write {tmp}: {exc}") from exc
            _flush_to_disk(tmp)
            written = tmp.stat()
            meta = {
                "format": _FORMAT,
                "covered": covered,
                "key": key,
                "ndim": self._graph.ndim,
                "file": _file_id(written),
                "sha256": _digest(tmp),
            }
            meta_tmp.write_text(json.dumps(meta))
            _flush_to_disk(meta_tmp)
            if mode_of is not None:
                _take_mode(mode_of, (tmp, meta_tmp))
            with lock if lock is not None else nullcontext():
                if stop is not None and stop():
                    return False
                os.replace(tmp, path)  # a rename keeps the size and modification time
                os.replace(meta_tmp, path.with_name(path.name + ".json"))
            _sweep_leftovers(path)
            return True
        finally:
            for leftover in (tmp, meta_tmp):
                leftover.unlink(missing_ok=True)

    @classmethod
    def load(
        cls, path: Path, rows: NDArray[np.float32], gate: ReadGate | None = None
    ) -> AnnGraph | None:
        """The cached graph if it was built over a prefix of ``rows``, else ``None``.

        Args:
            path: the graph file written by :meth:`save`.
            rows: the index's current rows.
            gate: the graph's :class:`ReadGate`.

        Returns:
            The graph covering that prefix, or ``None`` (missing, stale or unreadable:
            a key file whose numbers are out of range included).

        Raises:
            AnnUnavailableError: the file and its key are this index's, but usearch,
                which reads the file, is not installed (checked before the rows are
                hashed). A missing library is not a property of the file: the caller
                decides what to do without the graph.
        """
        try:
            meta = json.loads(path.with_name(path.name + ".json").read_text())
            covered = int(meta["covered"])
            if (
                meta.get("format") != _FORMAT
                or int(meta["ndim"]) != rows.shape[1]
                or covered > len(rows)
            ):
                return None
            if not _same_file(path, meta["file"]):  # not the graph this key was written for
                return None
        except _UNREADABLE:
            return None
        load_usearch()  # AnnUnavailableError: the caller's to handle, not an unreadable file
        try:
            with ThreadPoolExecutor(max_workers=max(2, process_cpus())) as pool:
                # The graph file is read while its key is checked, not after.
                loading = pool.submit(_read_graph, path, rows.shape[1], meta.get("sha256"))
                if meta["key"] != content_key(rows[:covered], pool):
                    return None
                graph = loading.result()
            # The file may have been replaced while it was read.
            if len(graph) != covered or graph.ndim != rows.shape[1]:
                return None
            if not _same_file(path, meta["file"]):
                return None
            return cls(graph, rows[:covered], gate=gate)
        except _UNREADABLE:
            return None


# What a missing, truncated or tampered cache file raises while it is read and checked
# (usearch's errors are RuntimeErrors; OverflowError: int() of Infinity in the key file).
_UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, TypeError, OverflowError)


def _take_mode(source: Path, files: tuple[Path, ...]) -> None:
    try:
        mode = stat.S_IMODE(source.stat().st_mode) & 0o666
    except OSError:  # gone (a moved store): the umask's mode stays
        return
    for file in files:
        os.chmod(file, mode)


def _file_id(stat: os.stat_result) -> list[int]:
    # A rename keeps all three; a file written anew changes its inode at least.
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _same_file(path: Path, recorded: object) -> bool:
    """Whether ``path`` is the file :func:`_file_id` recorded."""
    return isinstance(recorded, list) and recorded == _file_id(path.stat())


def rounds_for(depth: int) -> tuple[tuple[int, int], ...]:
    """The candidate rounds, (rows asked for, search depth) each, for a first search
    depth of ``depth``: the second round only runs when the first could not certify
    the answer, the third (:data:`LOST_ROUND`, deeper) only when the second was lost
    (:meth:`AnnGraph.sample_stats`), and the exact path when none certified."""
    return ((min(64, depth), depth), (256, max(256, 2 * depth)), (64, max(LOST_DEPTH, 8 * depth)))


def candidate_routes(
    exact: NDArray[np.float32],
    approx: NDArray[np.float32],
    pos: NDArray[np.intp],
    complete: bool,
) -> tuple[list[int], float]:
    """The routes among the candidates, best first, and the horizon that certifies.

    ``exact`` and ``approx`` are the candidates' float32 and graph similarities and
    ``pos`` their route positions (``-1`` for dead rows, which still bound the
    horizon; ``approx`` is NaN for rows scored exactly because the graph does not hold
    them yet). If the graph returned the true nearest rows, every row it did not
    return scores at most the lowest candidate's graph score plus the quantisation
    error (taken as twice the largest one seen): a route whose exact maximum beats
    that horizon outranks every route missing from the candidates.

    Args:
        exact: float32 scores of the candidate rows.
        approx: the graph's scores of the same rows.
        pos: route position of each row.
        complete: the graph returned fewer rows than asked: it holds no other rows.

    Returns:
        Route positions by descending best candidate score, and the horizon.
    """
    best: dict[int, float] = {}
    for p, score in zip(pos.tolist(), exact.tolist(), strict=True):
        if p >= 0 and score > best.get(p, -np.inf):
            best[p] = score
    order = sorted(best, key=lambda p: (-best[p], p))
    if complete or not len(approx):
        return order, -np.inf
    errors = np.abs(exact - approx)
    err = float(errors.max())
    low = float(approx.min())
    if np.isnan(err):  # rows the graph does not hold yet: the horizon is the others'
        held = ~np.isnan(approx)
        if not held.any():
            return order, -np.inf
        err, low = float(errors[held].max()), float(approx[held].min())
    return order, low + 2 * err + 1e-4
