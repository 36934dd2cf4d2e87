"""Prometheus metrics: requests, latency, the embedder's queue and batches, libraries, saves.

Each application gets its own registry (tests build many apps in one process). Library and
queue figures are read at scrape time (the library service's census, taken by the /metrics
route just before it renders), so they are never stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from same_search.libraries.records import LibraryCensus
    from same_search.services import Services

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's metrics registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "same_search_requests",
            "Requests answered",
            ["service", "route", "err_no"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "same_search_request_seconds",
            "Request latency",
            ["service", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "same_search_embed_batch_size",
            "Images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.embedded = Counter("same_search_embedded_images", "Images embedded", registry=self.registry)
        self.census: list[LibraryCensus] = []
        #: Whether this scrape may carry per-library series (labelled with the appid).
        self.named = True

    def observe_request(self, service: str, route: str, err_no: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(service, route, str(err_no)).inc()
        self.latency.labels(service, route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        """Count one forward pass."""
        self.batch_size.observe(size)
        self.embedded.inc(size)

    def attach(self, services: Services) -> None:
        """Report the live state of ``services`` at every scrape."""
        self.registry.register(_LiveCollector(services))

    def exposition(self, census: list[LibraryCensus], named: bool = True) -> bytes:
        """The text format Prometheus scrapes, with ``census`` as the per-library figures; without
        ``named`` only their totals (no series names a library)."""
        self.census, self.named = census, named
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "same_search_embed_queue_depth", "Requests waiting for the embedders (every model's queue)"
        )
        queue.add_metric([], self.services.models.queue_size)
        yield queue
        admission = self.services.embed.admission
        decoding = GaugeMetricFamily(
            "same_search_decode_megapixels_in_flight",
            "Megapixels of large pictures admitted for decoding (waiting or decoding)",
        )
        decoding.add_metric([], admission.in_flight)
        shed = CounterMetricFamily(
            "same_search_decodes_shed", "Decodes of large pictures refused (err_no 99) past the decode budget"
        )
        shed.add_metric([], admission.shed)
        yield decoding
        yield shed
        census = self.services.metrics.census
        libraries = GaugeMetricFamily("same_search_libraries", "Libraries served")
        libraries.add_metric([], len(census))
        total = GaugeMetricFamily("same_search_items", "Live items in every library together")
        total.add_metric([], sum(lib.items for lib in census))
        yield libraries
        yield total
        yield from _recall_metrics(census, self.services.metrics.named)
        if not self.services.metrics.named:
            yield from _rebuild_metrics(self.services, named=False)
            return
        items = GaugeMetricFamily("same_search_library_items", "Live items per library", labels=["appid"])
        capacity = GaugeMetricFamily(
            "same_search_library_capacity", "Configured capacity (0 = unbounded)", labels=["appid"]
        )
        save_age = GaugeMetricFamily(
            "same_search_index_save_age_seconds", "Seconds since the index was last saved", labels=["appid"]
        )
        now = time.time()
        for lib in census:
            items.add_metric([lib.appid], lib.items)
            capacity.add_metric([lib.appid], self.services.cfg.limits.library_capacity)
            if lib.last_index_save is not None:
                save_age.add_metric([lib.appid], now - lib.last_index_save)
        yield items
        yield capacity
        yield save_age
        yield from _rebuild_metrics(self.services)
        promotions = CounterMetricFamily(
            "same_search_promotions",
            "Re-ranked searches by how promotion ended: exact_copy (the best hit is the query's exact "
            "copy), out_of_reach (no candidate close enough to be a copy), checked (the query's local "
            "features were extracted and candidates checked)",
            labels=["outcome"],
        )
        for outcome, count in self.services.libraries.search.promotions.items():
            promotions.add_metric([outcome], count)
        yield promotions


def _rebuild_metrics(services: Services, named: bool = True) -> Iterator[Metric]:
    """Background index rebuilds: which run, how far they got (per library, when ``named``), how
    many ended and how."""
    rebuilds = services.libraries.maintenance.rebuilds
    running = GaugeMetricFamily(
        "same_search_rebuild_running", "1 while the library's index is being rebuilt", labels=["appid"]
    )
    progress = GaugeMetricFamily(
        "same_search_rebuild_progress_ratio",
        "Share of the rows a running rebuild has built (catching up and saving follow)",
        labels=["appid"],
    )
    for rebuild in list(rebuilds.latest.values()):
        running.add_metric([rebuild.appid], 1 if rebuild.running else 0)
        if rebuild.running:
            total = rebuild.progress.total
            progress.add_metric([rebuild.appid], rebuild.progress.done / total if total else 0.0)
    finished = CounterMetricFamily(
        "same_search_rebuilds_finished", "Rebuilds ended since the start, by outcome", labels=["state"]
    )
    for state, count in rebuilds.finished.items():
        finished.add_metric([state], count)
    if named:
        yield running
        yield progress
    yield finished


def _recall_metrics(census: list[LibraryCensus], named: bool) -> Iterator[Metric]:
    """Each library's measured recall@10 and the depth chosen for it (per library, when
    ``named``), and how many libraries measured below ``[index] target_recall``."""
    measured = [(lib.appid, lib.recall) for lib in census if lib.recall and "recall" in lib.recall]
    below = GaugeMetricFamily(
        "same_search_libraries_below_target_recall",
        "Libraries whose measured recall@10 (unfiltered or with their common tag) is below target",
    )
    below.add_metric([], sum(1 for _, r in measured if r.get("below_target")))
    yield below
    if not named:
        return
    value = GaugeMetricFamily(
        "same_search_index_recall",
        "recall@10 a library measured on its own items against exact search (filter: none, or its "
        "most common tag); 1 for a library searched exactly",
        labels=["appid", "filter"],
    )
    ef = GaugeMetricFamily("same_search_index_search_ef", "The graph's tuned ef", labels=["appid"])
    candidates = GaugeMetricFamily(
        "same_search_index_search_candidates",
        "Candidates of the first depth tier (a reduced index re-ranks them natively)",
        labels=["appid"],
    )
    for appid, r in measured:
        value.add_metric([appid, "none"], r["recall"])
        if r.get("recall_filtered") is not None:
            value.add_metric([appid, "tag"], r["recall_filtered"])
    for lib in census:
        if lib.recall and "ef" in lib.recall:
            ef.add_metric([lib.appid], lib.recall["ef"])
            candidates.add_metric([lib.appid], lib.recall["candidates"])
    yield value
    yield ef
    yield candidates
