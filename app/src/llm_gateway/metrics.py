"""Prometheus metrics. With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR so
/metrics aggregates all of them (prometheus-client's multiprocess mode).

They are the only record of what the writer did: /api/db-stats reads its ``writer``
figures from them (``writer_summary``), so both describe the same workers.
"""

import math
import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)

REQUESTS = Counter(
    "llm_gateway_requests_total", "Chat completion requests", ["model", "status_code"]
)
LATENCY = Histogram(
    "llm_gateway_request_latency_seconds",
    "Total request latency",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
DB_OVERHEAD = Histogram(
    "llm_gateway_db_overhead_seconds",
    "Time the request path spent on logging",
    buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter("llm_gateway_tokens_total", "Tokens used", ["model", "kind"])
COST = Counter("llm_gateway_cost_total", "Cost computed from model_info prices", ["model"])
WRITER_QUEUE = Gauge(
    "llm_gateway_writer_queue_depth",
    "Exchanges waiting for the writer",
    multiprocess_mode="livesum",
)
SPOOL_BACKLOG = Gauge(
    "llm_gateway_spool_backlog", "Exchanges on disk awaiting replay", multiprocess_mode="livesum"
)
WRITER_EXCHANGES = Counter("llm_gateway_writer_exchanges_total", "Exchanges committed", ["path"])
WRITER_FAILURES = Counter("llm_gateway_writer_failures_total", "Failed batch commits")
SPOOLED = Counter("llm_gateway_spooled_total", "Exchanges written to the spool")
WRITER_QUEUE_FULL = Counter(
    "llm_gateway_writer_queue_full_total", "Exchanges spooled because the writer's queue was full"
)
WRITER_QUARANTINED = Counter(
    "llm_gateway_writer_quarantined_total",
    "Exchanges logged in reduced form or not at all, their original kept as a dead letter",
)
EXCHANGES_LOST = Counter(
    "llm_gateway_exchanges_lost_total",
    "Exchanges answered that will never reach the database",
)
WRITER_RESTARTS = Counter(
    "llm_gateway_writer_restarts_total", "Times a writer task failed and was started again"
)
# livemin/livemax: one dead or stalled writer among the workers shows in the aggregate.
WRITER_UP = Gauge(
    "llm_gateway_writer_up",
    "1 while every live worker's writer task runs",
    multiprocess_mode="livemin",
)
WRITER_STALLED = Gauge(
    "llm_gateway_writer_stalled",
    "1 while some worker has exchanges waiting and no write finishing (writer.STALL_AFTER_S)",
    multiprocess_mode="livemax",
)
WRITER_DB_OK = Gauge(
    "llm_gateway_writer_db_ok",
    "1 while every live worker's writer last reached the database",
    multiprocess_mode="livemin",
)
# Its percentiles in /api/db-stats are estimated from these buckets, so they are finer
# where commits fall: ~1-2 ms for a sync group, tens of ms for a 500-exchange batch.
BATCH_COMMIT = Histogram(
    "llm_gateway_writer_batch_commit_seconds",
    "Batch commit latency",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05,
             0.075, 0.1, 0.25, 0.5, 1, 5),
)  # fmt: skip


class ModelMetrics(NamedTuple):
    latency: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    cost: Counter


# labels() takes a lock and builds a key on every call; resolving the children once per
# label value keeps the hot path to one cached lookup. Label values are bounded: model
# names come from the config ("-" for anything else) and status codes are few.
@lru_cache(maxsize=4096)
def for_model(model: str) -> ModelMetrics:
    return ModelMetrics(
        LATENCY.labels(model),
        TOKENS.labels(model, "prompt"),
        TOKENS.labels(model, "completion"),
        COST.labels(model),
    )


@lru_cache(maxsize=4096)
def requests_counter(model: str, status: int) -> Counter:
    return REQUESTS.labels(model, str(status))


def forget_this_process() -> None:
    """On a clean stop, drop this worker's live gauges from the multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


def registry() -> CollectorRegistry:
    """What /metrics shows: every worker's metrics in multiprocess mode, else this process's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    aggregate = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregate)
    return aggregate


def render() -> tuple[bytes, str]:
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def writer_summary(families: Iterable[Metric] | None = None) -> dict[str, Any]:
    """The writer's figures as /api/db-stats reports them, from the metrics: by default
    what /metrics shows (all workers in multiprocess mode); or from ``families`` parsed
    elsewhere, e.g. ``prometheus_client.parser.text_string_to_metric_families(page)`` of a
    scraped /metrics page, which gives the same numbers."""
    samples = {
        family.name: family.samples
        for family in (registry().collect() if families is None else families)
    }

    def total(metric: Counter | Gauge | Histogram, suffix: str = "", **labels: str) -> float:
        """Summed over the label values (those in ``labels`` only, if given)."""
        name = metric.describe()[0].name  # a counter's family name drops "_total"
        wanted = {name + suffix} if suffix else {name, name + "_total"}
        return sum(
            sample.value
            for sample in samples.get(name, ())
            if sample.name in wanted and labels.items() <= sample.labels.items()
        )

    def count(metric: Counter | Gauge | Histogram, suffix: str = "", **labels: str) -> int:
        return int(total(metric, suffix, **labels))

    commit_buckets = sorted(
        (float(sample.labels["le"]), sample.value)
        for sample in samples.get(BATCH_COMMIT.describe()[0].name, ())
        if sample.name.endswith("_bucket")
    )
    return {
        "exchanges_written": count(WRITER_EXCHANGES),
        "batches": count(BATCH_COMMIT, "_count"),
        "failures": count(WRITER_FAILURES),
        "spooled": count(SPOOLED),
        "replayed": count(WRITER_EXCHANGES, path="replay"),
        "queue_full": count(WRITER_QUEUE_FULL),
        "quarantined": count(WRITER_QUARANTINED),
        "lost": count(EXCHANGES_LOST),
        "restarts": count(WRITER_RESTARTS),
        # Gauges: now, summed over live workers; the flags hold for every live worker
        # (running, db_ok) or for any (stalled), by their multiprocess modes.
        "running": total(WRITER_UP) >= 1,
        "stalled": total(WRITER_STALLED) >= 1,
        "queue_depth": count(WRITER_QUEUE),
        "spool_backlog": count(SPOOL_BACKLOG),
        "db_ok": total(WRITER_DB_OK) >= 1,
        # Bucket estimates (as PromQL's histogram_quantile), not exact percentiles: the
        # true value lies somewhere in the same bucket.
        "batch_commit_ms_p50": _estimate_ms(commit_buckets, 0.5),
        "batch_commit_ms_p99": _estimate_ms(commit_buckets, 0.99),
    }


def _estimate_ms(buckets: list[tuple[float, float]], quantile: float) -> float | None:
    """Quantile of a histogram from its sorted cumulative (upper bound in s, count)
    buckets, interpolated linearly inside the bucket it falls in; None without
    observations."""
    if not buckets or not buckets[-1][1]:
        return None
    rank = quantile * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:  # the last (+Inf) bucket holds every observation
            break
        lower, below = upper, count
    if math.isinf(upper):  # above the highest bound: say that bound, as Prometheus does
        return round(lower * 1000, 3)
    return round((lower + (upper - lower) * (rank - below) / (count - below)) * 1000, 3)
