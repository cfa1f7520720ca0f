"""What the server says about a load level: deltas of its Prometheus counters and
histograms between a scrape before and a scrape after the level.

Per request, the scheduler observes ``segserve_queue_time_seconds`` (enqueue -> batch
start) and ``segserve_compute_time_seconds`` (the run time of the batch it rode in);
``segserve_batch_size`` is observed once per batch. Mean = delta(_sum) / delta(_count).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset]  # (sample name, frozenset of label items)


def parse_samples(text: str) -> dict[Sample, float]:
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(client: httpx.Client, base_url: str) -> dict[Sample, float]:
    response = client.get(base_url.rstrip("/") + "/metrics", timeout=10)
    response.raise_for_status()
    return parse_samples(response.text)


@dataclass(frozen=True)
class ServerDelta:
    requests_by_status: dict[str, int]
    queue_ms: float | None  # mean per request
    compute_ms: float | None  # mean per request (its batch's run time)
    batch_size: float | None  # mean requests per executed batch
    batches: int
    latency_ms: float | None  # mean server-side request latency


def sum_matching(samples: dict[Sample, float], name: str, model: str) -> float:
    return sum(value for (sample, labels), value in samples.items()
               if sample == name and ("model", model) in labels)


def delta(before: dict[Sample, float], after: dict[Sample, float], model: str) -> ServerDelta:
    def change(name: str) -> float:
        return sum_matching(after, name, model) - sum_matching(before, name, model)

    def mean(histogram: str, scale: float = 1.0) -> float | None:
        count = change(f"{histogram}_count")
        return change(f"{histogram}_sum") / count * scale if count else None

    statuses: dict[str, int] = {}
    for (sample, labels), value in after.items():
        label_map = dict(labels)
        if sample == "segserve_requests_total" and label_map.get("model") == model:
            grown = value - before.get((sample, labels), 0.0)
            if grown:
                status = label_map.get("status", "?")
                statuses[status] = statuses.get(status, 0) + int(grown)
    return ServerDelta(
        requests_by_status=statuses,
        queue_ms=mean("segserve_queue_time_seconds", 1000.0),
        compute_ms=mean("segserve_compute_time_seconds", 1000.0),
        batch_size=mean("segserve_batch_size"),
        batches=int(change("segserve_batch_size_count")),
        latency_ms=mean("segserve_request_latency_seconds", 1000.0),
    )
