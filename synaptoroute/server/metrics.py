"""Prometheus metrics in the text exposition format, written by hand (no dependency).

Every update happens on the event loop thread, so the counters need no lock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Registry", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _label_text(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return [*self.header(), *self.samples()]


class Counter(_Metric):
    """A monotonically increasing count, per label values."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``labels``."""
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, labels: Labels = ()) -> float:
        """The current count of one series."""
        return self._values.get(labels, 0.0)

    def series(self) -> dict[Labels, float]:
        """A copy of every series' count, by label values."""
        return dict(self._values)

    def samples(self) -> list[str]:
        """Exposition lines."""
        return [
            f"{self.name}{_label_text(self.labelnames, k)} {_number(v)}"
            for k, v in sorted(self._values.items())
        ]


class Gauge(_Metric):
    """A value that goes up and down, or is read from a callback at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_text)
        self._value = 0.0
        self._read = read

    def set(self, value: float) -> None:
        """Set the value."""
        self._value = value

    def add(self, amount: float) -> None:
        """Change the value by ``amount``."""
        self._value += amount

    @property
    def value(self) -> float:
        """The current value."""
        return float(self._read()) if self._read is not None else self._value

    def samples(self) -> list[str]:
        """Exposition lines."""
        return [f"{self.name} {_number(self.value)}"]


class Histogram(_Metric):
    """Observations counted in cumulative buckets, per label values."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        """Count one observation."""
        counts = self._counts.get(labels)
        if counts is None:
            counts = self._counts[labels] = [0] * (len(self.buckets) + 1)
            self._sums[labels] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sums[labels] += value

    def count(self, labels: Labels = ()) -> int:
        """How many observations one series holds."""
        return sum(self._counts.get(labels, ()))

    def series(self) -> dict[Labels, list[int]]:
        """A copy of every series' per-bucket counts (not cumulative; ``+Inf`` last)."""
        return {labels: list(counts) for labels, counts in self._counts.items()}

    def samples(self) -> list[str]:
        """Exposition lines: cumulative buckets, ``+Inf``, sum and count."""
        lines = []
        for labels, counts in sorted(self._counts.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(
                    f"{self.name}_bucket{_label_text(self.labelnames, labels, le)} {running}"
                )
            label_text = _label_text(self.labelnames, labels)
            lines.append(f"{self.name}_sum{label_text} {_number(self._sums[labels])}")
            lines.append(f"{self.name}_count{label_text} {running}")
        return lines


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> None:
        """Add a metric to the exposition."""
        self.metrics.append(metric)

    def render(self) -> str:
        """The whole exposition text."""
        lines = [line for metric in self.metrics for line in metric.render()]
        return "\n".join(lines) + "\n"


class _WorkerStats(Protocol):
    batches: int
    rejected: int
    batch_sizes: list[int]


class ServiceMetrics:
    """The service's metrics: HTTP requests, latency, batches, queue depth, rejections.

    Args:
        queue_depth: reads the batching queue's depth at scrape time.
        routes: reads the number of routes at scrape time.
        queue_cost: reads what the queued texts cost (characters the model reads).
    """

    def __init__(
        self,
        queue_depth: Callable[[], float],
        routes: Callable[[], float],
        queue_cost: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.registry = Registry()
        self.requests = Counter(
            "synaptoroute_http_requests_total",
            "HTTP requests answered, by method, path template and status.",
            ("method", "path", "status"),
        )
        self.latency = Histogram(
            "synaptoroute_http_request_duration_seconds",
            "Time from request start to the end of the response, by method and path template.",
            LATENCY_BUCKETS,
            ("method", "path"),
        )
        self.in_flight = Gauge(
            "synaptoroute_http_requests_in_flight", "HTTP requests being served now."
        )
        self.queries = Counter(
            "synaptoroute_queries_total",
            "Texts routed, by outcome (matched or no_route).",
            ("outcome",),
        )
        self.batch_size = Histogram(
            "synaptoroute_batch_size",
            "Texts per batch handed to the model by the batching worker.",
            BATCH_BUCKETS,
        )
        self.queue_depth = Gauge(
            "synaptoroute_queue_depth", "Texts waiting in the batching queue.", queue_depth
        )
        self.queue_cost = Gauge(
            "synaptoroute_queue_cost",
            "What the texts waiting in the batching queue cost: characters the model "
            "reads, plus 16 a text (the queue's bound is max_queue_cost).",
            queue_cost,
        )
        self.rejections = Counter(
            "synaptoroute_rejections_total",
            "Requests refused, by reason (overloaded, timeout, shutting_down, "
            "store_unavailable, too_costly, busy, body_too_large, rate_limited, "
            "read_only, unauthorized).",
            ("reason",),
        )
        self.routes = Gauge("synaptoroute_routes", "Routes held by the router.", routes)
        self.ready = Gauge("synaptoroute_ready", "1 when the model is loaded and the store open.")
        for metric in (
            self.requests,
            self.latency,
            self.in_flight,
            self.queries,
            self.batch_size,
            self.queue_depth,
            self.queue_cost,
            self.rejections,
            self.routes,
            self.ready,
        ):
            self.registry.register(metric)
        self._seen_batches = 0
        #: Called as each request ends, before it is counted (the console's live
        #: figures sample then).
        self.on_request: list[Callable[[], None]] = []

    def fold_batches(self, stats: _WorkerStats) -> None:
        """Move batch sizes recorded by the worker since the last call into the histogram.

        The worker keeps only its recent batch sizes, so this runs after every query
        request and at every scrape; both happen on the loop that updates the stats.
        """
        new = stats.batches - self._seen_batches
        if new < 0:  # the worker's stats were reset
            new = stats.batches
        sizes = stats.batch_sizes
        for size in sizes[len(sizes) - min(new, len(sizes)) :] if new else ():
            self.batch_size.observe(size)
        self._seen_batches = stats.batches

    def render(self, stats: _WorkerStats) -> str:
        """The exposition text, with the worker's latest batches folded in."""
        self.fold_batches(stats)
        return self.registry.render()
