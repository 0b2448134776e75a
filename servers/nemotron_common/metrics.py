"""Prometheus metrics of a server, served at ``GET /metrics`` in the text format.

Each server owns one registry (never the process-global one, so a test can run several servers in
one process). Histograms are observed where the event happens; state that already exists (open
sessions, queued work, an engine's cumulative step counters, GPU memory) is read at scrape time by a
collector, so serving metrics adds nothing to the hot path but the observations.

A service whose transport workers share its port (``workers``) keeps its counters and histograms in
files that every process writes (Prometheus's multiprocess mode, :func:`share_between_processes`):
a scrape lands on any one process and reports them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

METRICS_PATH = "/metrics"
# Latencies a voice agent cares about: from a few milliseconds to a few seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


_shared_directory: str | None = None  # where this process's counters live, once shared


def share_between_processes(directory: str) -> None:
    """From here on, counters and histograms made in this process are kept in ``directory`` (empty
    when the service starts), where every process of the service keeps its own."""
    global _shared_directory
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # what prometheus_client picks at import with it set
    _shared_directory = directory


class _Scrape(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class Metrics:
    def __init__(self, service: str) -> None:
        self.prefix = f"nemotron_{service}"
        self.registry = CollectorRegistry()
        self._scrapes: list[_Scrape] = []

    def histogram(self, name: str, documentation: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return Histogram(f"{self.prefix}_{name}", documentation, labels, registry=self.registry,
                         buckets=buckets)

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(f"{self.prefix}_{name}", documentation, labels, registry=self.registry)

    def at_scrape(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add metrics computed when scraped: ``collect`` yields metric families (``gauge``,
        ``counter_family``)."""
        self._scrapes.append(_Scrape(collect))
        self.registry.register(self._scrapes[-1])

    def gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{self.prefix}_{name}", documentation, value=value)

    def counter_family(self, name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(f"{self.prefix}_{name}", documentation, labels=labels)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        if _shared_directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        # Every process's counters and histograms, summed from their files, and this one's view of
        # the state read at scrape time (the same in every process).
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=_shared_directory)
        for scrape in self._scrapes:
            registry.register(scrape)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def cuda_memory_reserved() -> int:
    """Bytes the caching allocator of this process holds on the current GPU (0 without CUDA)."""
    import torch

    return torch.cuda.memory_reserved() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
