"""Helpers shared by the benchmark scripts: data loading, machine description, percentiles.

Run a benchmark as a script from the repository root (``python benchmarks/<name>.py``);
the script's folder is then on ``sys.path``, so ``from common import ...`` works.
The data folder is, in order: ``--data``, the ``SYNAPTOROUTE_DATA`` environment
variable, or ``../shared/data`` next to the repository.

This module is imported by several scripts: keep it small and its names stable.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, thread_time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from synaptoroute.encoder import EncoderProtocol

__all__ = [
    "DATASETS",
    "REPO_ROOT",
    "Example",
    "PrecomputedEncoder",
    "add_data_argument",
    "by_label",
    "cache_file",
    "cpu_model",
    "data_dir",
    "encode_cached",
    "load_split",
    "machine_info",
    "percentile",
    "replace_section",
    "summarize_ms",
    "time_ms",
    "time_wall_cpu_ms",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("clinc150", "banking77", "snips")


@dataclass(frozen=True)
class Example:
    """One labelled row; ``label`` is ``None`` for out-of-scope (CLINC150 only)."""

    text: str
    label: str | None


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """Add the shared ``--data`` option to a script's parser."""
    parser.add_argument(
        "--data",
        default=None,
        help="folder holding <dataset>/{train,val}.jsonl "
        "(default: $SYNAPTOROUTE_DATA, else ../shared/data next to the repository)",
    )


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``override``, else ``$SYNAPTOROUTE_DATA``, else ``../shared/data``.

    Raises:
        FileNotFoundError: the folder does not exist.
    """
    chosen = override or os.environ.get("SYNAPTOROUTE_DATA") or REPO_ROOT.parent / "shared/data"
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        msg = f"data folder not found: {path} (pass --data or set SYNAPTOROUTE_DATA)"
        raise FileNotFoundError(msg)
    return path


def load_split(
    dataset: str, split: str, data: str | os.PathLike[str] | None = None
) -> list[Example]:
    """Rows of ``<data>/<dataset>/<split>.jsonl`` in file order."""
    path = data_dir(data) / dataset / f"{split}.jsonl"
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                out.append(Example(str(row["text"]), row["label"]))
    return out


def by_label(rows: Iterable[Example]) -> dict[str, list[str]]:
    """In-scope texts grouped by label, labels in first-seen order (OOS rows dropped)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row.label is not None:
            groups.setdefault(row.label, []).append(row.text)
    return groups


def cpu_model() -> str:
    """The CPU model name as lscpu (or /proc/cpuinfo) reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How to rerun this run: ``python benchmarks/<script>`` and its arguments, quoted
    for a shell (a title given to ``--only`` keeps its spaces)."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def machine_info() -> str:
    """One line: cores, CPU model, 1-minute load average, Python, numpy, date (UTC)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{os.cpu_count()} cores, {cpu_model()}, load {load:.2f} at start, "
        f"Python {platform.python_version()}, numpy {np.__version__}, {now}"
    )


def replace_section(section: str, text: str) -> None:
    """Put ``text`` (which starts with the ``section`` heading) into BENCHMARKS.md.

    ``section`` is a whole heading line (``"## GPU (issue 17)"``): it matches only a
    line equal to it (trailing spaces aside), never a longer heading that contains
    it nor the same words in a section's body. The first such line's section, up to
    the next ``## `` heading, is replaced; the text is appended at the end when no
    heading matches.
    """
    path = REPO_ROOT / "BENCHMARKS.md"
    doc = path.read_text(encoding="utf-8")
    heading = section.strip()
    lines = doc.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        doc = "".join([*lines[:start], text, *lines[end:]])
    path.write_text(doc, encoding="utf-8")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation."""
    if not values:
        msg = "percentile of an empty sequence"
        raise ValueError(msg)
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and count of durations given in milliseconds."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": float(np.mean(values)),
        "n": float(len(values)),
    }


def time_ms(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn`` in milliseconds (``perf_counter``)."""
    start = perf_counter()
    fn()
    return (perf_counter() - start) * 1000.0


def time_wall_cpu_ms(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall time and the calling thread's CPU time of one call of ``fn``, in milliseconds.

    On a busy machine the CPU time leaves out the time the thread waited for a core,
    so it estimates the cost on an idle machine (for single-threaded work only).
    """
    wall, cpu = perf_counter(), thread_time()
    fn()
    return (perf_counter() - wall) * 1000.0, (thread_time() - cpu) * 1000.0


class PrecomputedEncoder:
    """An encoder that returns vectors computed earlier, so a benchmark encodes once.

    It reports the model id of the encoder that made the vectors, so routers and
    stores treat them as that model's. Unknown texts raise ``KeyError``.
    """

    def __init__(self, model_id: str, table: dict[str, NDArray[np.float32]]) -> None:
        if not table:
            msg = "PrecomputedEncoder needs at least one vector"
            raise ValueError(msg)
        self._model_id = model_id
        self._table = table
        self._dimension = len(next(iter(table.values())))
        self.calls = 0

    @property
    def model_id(self) -> str:
        """The model that made the vectors."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """Vector length."""
        return self._dimension

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The stored vectors of ``texts``, in order."""
        self.calls += 1
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.stack([self._table[t] for t in texts]).astype(np.float32, copy=False)


def cache_file(
    cache: str | os.PathLike[str], kind: str, model_id: str, texts: Sequence[str], suffix: str
) -> Path:
    """The file in ``cache`` for ``kind`` of data computed from ``texts`` by ``model_id``:
    its name hashes the model id and the texts, so a stale file is never used."""
    digest = hashlib.sha256(model_id.encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return Path(cache) / f"{kind}-{digest.hexdigest()[:20]}.{suffix}"


def encode_cached(
    encoder: EncoderProtocol, texts: Sequence[str], cache: str | os.PathLike[str] | None = None
) -> NDArray[np.float32]:
    """``encoder.encode(texts)``, reusing a ``.npy`` file in ``cache`` when one matches.

    The file name hashes the model id and the texts, so a stale file is never used.
    """
    if cache is None:
        return encoder.encode(list(texts))
    path = cache_file(cache, "vectors", encoder.model_id, texts, "npy")
    if path.is_file():
        vectors: NDArray[np.float32] = np.load(path)
        return vectors
    vectors = encoder.encode(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


#: The k of recall@k that the tool-selection benchmarks report.
RECALL_AT = (1, 3, 5)


def intent_description(intent: str) -> str:
    """A CLINC150 intent as a tool's description: CLINC150 has none, so its name in words."""
    return f"Tool for: {intent.replace('_', ' ')}"


def measure_selection(
    build: Callable[[], Callable[[str], Sequence[str]]], rows: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Recall@k (:data:`RECALL_AT`) and time per message of the tool selection ``build``
    returns (its build timed too), over ``rows`` of (text, intent): the selection maps a
    message to the names of the tools it picks, best first."""
    start = perf_counter()
    select = build()
    build_s = perf_counter() - start
    hits = dict.fromkeys(RECALL_AT, 0)
    times: list[float] = []
    for text, intent in rows:
        start = perf_counter()
        names = list(select(text))
        times.append((perf_counter() - start) * 1000.0)
        for k in RECALL_AT:
            hits[k] += intent in names[:k]
    n = len(rows)
    return {
        "recall": {k: hits[k] / n for k in RECALL_AT},
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "build_s": build_s,
        "rows": n,
    }


def selection_table(first_column: str, results: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table of :func:`measure_selection` results, one row per label."""
    lines = [
        f"| {first_column} | recall@1 | recall@3 | recall@5 | p50 ms | p99 ms | build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        rec = r["recall"]
        lines.append(
            f"| {label} | {rec[1]:.1%} | {rec[3]:.1%} | {rec[5]:.1%} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['build_s']:.1f} |"
        )
    return lines
