"""Readers for locust's ``--csv PREFIX`` files (PREFIX_stats.csv, PREFIX_failures.csv).

    python -m segserve_loadtest.locust_csv out/locust     # JSON summary of a finished run

Locust writes response times in ms, percentile columns named like "99.9%", and "N/A" for
percentiles of an endpoint with no requests. The totals row has an empty Type and the
Name "Aggregated". The files are rewritten every second during a run, so the last write
can trail the console's final summary by up to a second of requests.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class EndpointStats:
    method: str
    name: str
    requests: int
    failures: int
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    mean_content_bytes: float
    requests_per_s: float
    failures_per_s: float
    percentiles_ms: dict[str, float | None]  # "50%" -> ms

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class FailureRecord:
    method: str
    name: str
    error: str
    occurrences: int


def _number(text: str) -> float | None:
    return None if text in ("", "N/A") else float(text)


def read_stats(path: Path) -> list[EndpointStats]:
    """Rows of PREFIX_stats.csv in file order; the aggregated row comes last."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    stats = []
    for row in rows:
        percentiles = {key: _number(value) for key, value in row.items() if key.endswith("%")}
        stats.append(EndpointStats(
            method=row["Type"],
            name=row["Name"],
            requests=int(row["Request Count"]),
            failures=int(row["Failure Count"]),
            median_ms=float(row["Median Response Time"]),
            mean_ms=float(row["Average Response Time"]),
            min_ms=float(row["Min Response Time"]),
            max_ms=float(row["Max Response Time"]),
            mean_content_bytes=float(row["Average Content Size"]),
            requests_per_s=float(row["Requests/s"]),
            failures_per_s=float(row["Failures/s"]),
            percentiles_ms=percentiles,
        ))
    return stats


def aggregated(stats: list[EndpointStats]) -> EndpointStats:
    for row in stats:
        if row.name == AGGREGATED and not row.method:
            return row
    raise ValueError("no Aggregated row: not a locust stats file")


def read_failures(path: Path) -> list[FailureRecord]:
    with path.open(newline="") as handle:
        return [
            FailureRecord(row["Method"], row["Name"], row["Error"], int(row["Occurrences"]))
            for row in csv.DictReader(handle)
        ]


def summary(prefix: str) -> dict:
    stats = read_stats(Path(f"{prefix}_stats.csv"))
    failures = read_failures(Path(f"{prefix}_failures.csv"))
    return {
        "aggregated": asdict(aggregated(stats)),
        "endpoints": [asdict(row) for row in stats if row.name != AGGREGATED],
        "failures": [asdict(row) for row in failures],
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m segserve_loadtest.locust_csv CSV_PREFIX")
    print(json.dumps(summary(sys.argv[1]), indent=2))
