"""The int8 pre-filter of the exact index: an int8 copy of the matrix, scanned by onnxruntime.

The scan is a tiny ONNX graph (dynamic quantisation of the query, an integer matrix
product, the scaling back), written here as protobuf bytes by hand, so that no
``onnx`` package is needed. :meth:`Int8Scan.approx` returns approximate scores and a
rigorous bound on their error, which :class:`~synaptoroute.index.Snapshot` uses to
re-score in float32 only the rows that could change an answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from ._cpu import blas_threads

__all__ = ["Int8Scan", "build"]

# The index's logger: a missing kernel is a fact about the index's scoring.
_log = logging.getLogger("synaptoroute.index")

# The int8 codes use 7 bits (-63..63), not 8. On x86 CPUs without VNNI (AVX2 only),
# onnxruntime's uint8 x int8 product adds pairs of products into int16 with
# saturation (vpmaddubsw): 255 x 127 x 2 overflows, and scores came out wrong by far
# more than the error bound (0.52 for an exact 1.0). 255 x 63 x 2 = 32,130 fits. The
# cost is a coarser copy: a larger bound, so a few more rows are re-scored exactly.
_LEVELS = 63


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _pb_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _pb_int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _pb_value_info(name: str, elem_type: int, dims: tuple[int, ...]) -> bytes:
    shape = b"".join(_pb_bytes(1, _pb_int(1, d)) for d in dims)  # TensorShapeProto.dim
    tensor = _pb_int(1, elem_type) + _pb_bytes(2, shape)  # TypeProto.Tensor
    return _pb_bytes(1, name.encode()) + _pb_bytes(2, _pb_bytes(1, tensor))


def _pb_tensor(name: str, elem_type: int, array: NDArray[np.generic]) -> bytes:
    dims = b"".join(_pb_int(1, d) for d in array.shape)
    return (
        dims + _pb_int(2, elem_type) + _pb_bytes(8, name.encode()) + _pb_bytes(9, array.tobytes())
    )


def _pb_node(op: str, inputs: tuple[str, ...], outputs: tuple[str, ...], **ints: int) -> bytes:
    node = b"".join(_pb_bytes(1, x.encode()) for x in inputs)
    node += b"".join(_pb_bytes(2, x.encode()) for x in outputs) + _pb_bytes(4, op.encode())
    for name, value in ints.items():  # AttributeProto {name, i, type: INT}
        node += _pb_bytes(5, _pb_bytes(1, name.encode()) + _pb_int(3, value) + _pb_int(20, 2))
    return node


def _scan_model(columns: NDArray[np.int8], column_scale: float) -> bytes:
    """ONNX bytes of the int8 scan of a float query ``A`` against ``columns``.

    ``A`` is quantised to uint8 by ``DynamicQuantizeLinear`` (its scale ``AS`` is an
    output, for the error bound), multiplied by the int8 ``columns`` with
    ``MatMulInteger``, and scaled back to float (``Y``); ``QQ`` is ``|A|^2``. The
    columns are a constant of the graph, so onnxruntime packs them once when the
    session is made, not on every run. The protobuf is written by hand (a few
    fields of onnx.proto3) so the library does not need the ``onnx`` package.
    """
    int8, float32 = 3, 1  # TensorProto.DataType
    dim, n = columns.shape
    nodes = [
        _pb_node("DynamicQuantizeLinear", ("A",), ("A8", "AS", "AZ")),
        _pb_node("MatMulInteger", ("A8", "B", "AZ"), ("YI",)),
        _pb_node("Cast", ("YI",), ("YF",), to=float32),
        _pb_node("Mul", ("AS", "BS"), ("SC",)),
        _pb_node("Mul", ("YF", "SC"), ("Y",)),
        _pb_node("ReduceSumSquare", ("A",), ("QQ",), keepdims=0),
    ]
    graph = b"".join(_pb_bytes(1, node) for node in nodes) + _pb_bytes(2, b"int8_scan")
    graph += _pb_bytes(5, _pb_tensor("B", int8, columns))
    graph += _pb_bytes(5, _pb_tensor("BS", float32, np.array(column_scale, dtype=np.float32)))
    graph += _pb_bytes(11, _pb_value_info("A", float32, (1, dim)))
    for name, dims in (("Y", (1, n)), ("AS", ()), ("QQ", ())):
        graph += _pb_bytes(12, _pb_value_info(name, float32, dims))
    # ModelProto: ir_version 8, producer, graph, opset_import {version: 13}
    return (
        _pb_int(1, 8)
        + _pb_bytes(2, b"synaptoroute")
        + _pb_bytes(7, graph)
        + _pb_bytes(8, _pb_int(2, 13))
    )


class Int8Scan:
    """An int8 copy of the first ``n`` matrix rows, scanned by onnxruntime.

    It reads a quarter of the bytes of the float32 product, which is memory-bound
    from 10k rows on (the encoder, run just before, evicts the matrix from cache).
    :meth:`approx` returns approximate scores and one rigorous bound on their
    rounding error, so :meth:`Snapshot.score` re-scores in float32 only the rows
    that could matter and returns exactly the routes and scores of the float32
    ``max`` aggregation.
    """

    def __init__(self, rows: NDArray[np.float32], threads: int) -> None:
        import onnxruntime as ort

        self.n = len(rows)
        self.threads = threads
        dim = rows.shape[1]
        peak = max((float(np.abs(b).max()) for b in _blocks(rows)), default=1.0)
        self.scale = _LEVELS / max(peak, 1e-12)
        columns = np.empty((dim, self.n), dtype=np.int8)  # onnxruntime's (dim, n) layout
        # Matrix-wide maxima of the norms the error bound needs: one bound for all rows
        # keeps the per-query work to a few vector passes. Computed block by block so
        # the float temporaries stay small at any size.
        max_l1 = max_l2 = max_err_l2 = 0.0
        start = 0
        for block in _blocks(rows):
            m8 = np.clip(np.rint(block * self.scale), -_LEVELS, _LEVELS).astype(np.int8)
            columns[:, start : start + len(block)] = m8.T
            start += len(block)
            residual = block - m8.astype(np.float32) / np.float32(self.scale)
            max_l1 = max(max_l1, float(np.abs(block).sum(axis=1).max()))
            max_l2 = max(max_l2, float(np.linalg.norm(block, axis=1).max()))
            max_err_l2 = max(max_err_l2, float(np.linalg.norm(residual, axis=1).max()))
        self.row_factor = min(max_l1, math.sqrt(dim) * max_l2)
        self.max_err_l2 = max_err_l2
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = _scan_model(columns, 1.0 / self.scale)
        del columns  # the session keeps its own packed copy
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self._sqrt_dim = math.sqrt(dim)

    def approx(self, query: NDArray[np.float32]) -> tuple[NDArray[np.float32], float]:
        """Approximate scores of the first ``n`` rows and a bound on their error."""
        feed = np.ascontiguousarray(query, dtype=np.float32)[None, :]
        y, a_scale, qq = self.session.run(None, {"A": feed})
        step = float(a_scale)  # the query's quantisation step: |q - q~|_inf <= step / 2
        # q.m - q~.m~ = (q - q~).m + q~.(m - m~). The first term is bounded by Hoelder
        # (l_inf x l_1) or Cauchy-Schwarz, whichever is smaller (row_factor); the second
        # by Cauchy-Schwarz with |q~|_2 <= |q|_2 + sqrt(dim) * step / 2. 1e-5 is slack
        # for float32 rounding in the quantisers and the scaling.
        first = step / 2 * self.row_factor
        second = (math.sqrt(float(qq)) + self._sqrt_dim * step / 2) * self.max_err_l2
        return y[0], first + second + 1e-5


def _blocks(rows: NDArray[np.float32], size: int = 65_536) -> Iterator[NDArray[np.float32]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def build(rows: NDArray[np.float32], threads: int | None = None) -> Int8Scan | None:
    """The int8 copy of ``rows``, or ``None`` where onnxruntime has no int8 kernel.

    ``threads``: its scan's threads (the router's ``blas_threads``); ``None`` picks
    them by the rows (:func:`~synaptoroute._cpu.blas_threads`)."""
    try:
        return Int8Scan(rows, threads=blas_threads(len(rows), threads))
    except Exception:  # no int8 kernel here: the float32 product still gives the answer
        _log.warning("int8 pre-filter unavailable; scoring in float32", exc_info=True)
        return None
