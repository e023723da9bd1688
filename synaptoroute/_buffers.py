"""Vector buffers a store's loader hands over to the router's index.

Opening a large store copied every vector twice after reading it (into one matrix,
then into the index's buffer): at a million 384-dimensional utterances, two 1.5 GB
copies, and first touches of fresh memory are slow on virtual machines. A loader that reads
into :func:`vector_buffer` and returns consecutive rows of it lets the index take the
buffer itself (:func:`take_buffer`), so the vectors are written once.

A buffer is taken only if it came from :func:`vector_buffer` and was not taken
before: arrays a store keeps for itself (``MemoryStorage``) are always copied.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["buffer_capacity", "read_utterances", "split_by_route", "take_buffer", "vector_buffer"]

# id -> buffer, while the buffer lives and is not taken. Arrays are not hashable, so
# a WeakValueDictionary keyed by id stands in for a weak set.
_GIVEN: weakref.WeakValueDictionary[int, NDArray[np.float32]] = weakref.WeakValueDictionary()


def buffer_capacity(rows: int) -> int:
    """The capacity a buffer for ``rows`` rows gets: a power of two, at least 16.

    The one growth policy of the index's buffer (:meth:`RouteIndex._grow
    <synaptoroute.index.RouteIndex>`) and of the buffers loaders fill, so a taken
    buffer has the room the index would have given it: capacities double, and each row
    is copied O(1) times however the buffer grows.
    """
    return 1 << max(4, (rows - 1).bit_length())


def vector_buffer(rows: int, dimension: int) -> NDArray[np.float32]:
    """An uninitialised float32 buffer for ``rows`` vectors, with the index's room to grow.

    Args:
        rows: how many vectors the loader will write into its leading rows.
        dimension: vector length.

    Returns:
        A ``(capacity, dimension)`` array; rows past ``rows`` are left untouched, so
        they cost no memory until the index writes them.
    """
    buf = np.empty((buffer_capacity(rows), dimension), dtype=np.float32)
    _GIVEN[id(buf)] = buf
    return buf


def take_buffer(
    parts: Sequence[NDArray[np.float32]], dimension: int
) -> tuple[NDArray[np.float32], int] | None:
    """The handed-over buffer that ``parts`` are consecutive leading rows of.

    Args:
        parts: arrays of vectors, in order.
        dimension: the index's vector length.

    Returns:
        ``(buffer, rows)`` (the buffer is no longer offered to anyone else), or
        ``None`` when the parts are not exactly rows ``0..rows`` of one buffer from
        :func:`vector_buffer`.
    """
    if not parts:
        return None
    # Both alive, so equal ids mean the same object.
    buf = _GIVEN.get(id(parts[0].base))
    if buf is None:
        return None
    if buf.ndim != 2 or buf.shape[1] != dimension or not buf.flags.c_contiguous:
        return None
    address, row_bytes, rows = buf.ctypes.data, buf.strides[0], 0
    owner: object = buf
    for part in parts:
        if (
            part.base is not owner
            or part.ndim != 2
            or not part.flags.c_contiguous
            or (len(part) and part.ctypes.data != address + rows * row_bytes)
        ):  # (an empty slice's data pointer is the buffer's start)
            return None
        rows += len(part)
    del _GIVEN[id(buf)]
    return buf, rows


def read_utterances(
    chunks: Iterable[Sequence[tuple[int, str, bytes]]], count: int, dim: int, store: str
) -> tuple[NDArray[np.int64], list[str], NDArray[np.float32]]:
    """Stream a store's ``(route_id, text, vector bytes)`` rows into one :func:`vector_buffer`.

    The one reader of the SQLite and PostgreSQL loaders.

    Args:
        chunks: the rows, in route then insertion order, a chunk at a time.
        count: the rows counted beforehand (the buffer grows if more come).
        dim: the vectors' length.
        store: names the store in the error.

    Returns:
        The rows' route ids, texts and vectors (leading rows of the buffer).

    Raises:
        StorageError: a vector is not ``dim`` float32s.
    """
    from .exceptions import StorageError

    width = 4 * dim
    buf = vector_buffer(count, dim)
    route_ids = np.empty(len(buf), dtype=np.int64)
    texts: list[str] = []
    at = 0
    for chunk in chunks:
        if any(len(r[2]) != width for r in chunk):
            msg = f"{store} holds vectors that are not {dim} float32s"
            raise StorageError(msg)
        end = at + len(chunk)
        if end > len(buf):  # rows committed after the count (PostgreSQL's read committed)
            bigger = vector_buffer(end, dim)
            bigger[:at] = buf[:at]
            buf, route_ids = bigger, np.resize(route_ids, len(bigger))
        blob = b"".join(r[2] for r in chunk)
        buf[at:end] = np.frombuffer(blob, dtype=np.float32).reshape(len(chunk), dim)
        route_ids[at:end] = [r[0] for r in chunk]
        texts.extend(r[1] for r in chunk)
        at = end
    return route_ids[:at], texts, buf[:at]


def split_by_route(
    route_ids: NDArray[np.int64],
    texts: list[str],
    vectors: NDArray[np.float32],
    ids: Sequence[int],
) -> list[tuple[list[str], NDArray[np.float32]]]:
    """Each route's texts and its vectors (views) from :func:`read_utterances`'s rows.

    Args:
        route_ids: the rows' route ids, ascending.
        texts: the rows' texts.
        vectors: the rows' vectors.
        ids: the routes wanted, ascending; one with no rows gets empty parts.

    Returns:
        ``(texts, vectors)`` per id, in order; the vectors stay consecutive rows of the
        loader's buffer, so the index can take it.
    """
    wanted = np.asarray(ids, dtype=np.int64)
    starts = np.searchsorted(route_ids, wanted).tolist()
    ends = np.searchsorted(route_ids, wanted + 1).tolist()
    return [(texts[lo:hi], vectors[lo:hi]) for lo, hi in zip(starts, ends, strict=True)]
