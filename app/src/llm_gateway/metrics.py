"""Prometheus metrics. With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR so
/metrics aggregates all of them (prometheus-client's multiprocess mode)."""

import os
from functools import lru_cache
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
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
BATCH_COMMIT = Histogram(
    "llm_gateway_writer_batch_commit_seconds",
    "Batch commit latency",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)


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


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
