"""Results of a sweep: one record per load level, plus what was run against what.
Plain dataclasses that round-trip through JSON, so a report can be re-rendered from
``sweep.json`` without re-running the load."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

CLOSED = "closed"  # fixed concurrency: each worker sends again when its answer arrives
OPEN = "open"  # fixed arrival rate: sends on schedule whether or not answers came back


@dataclass
class LevelResult:
    mode: str  # CLOSED or OPEN
    level: float  # concurrency (closed) or target requests/s (open)
    window_s: float  # measurement window: sends happen inside it
    elapsed_s: float  # window plus the drain of requests still in flight at its end
    requests: int  # answered (any status) or failed with an exception
    ok: int  # HTTP 200
    errors: int  # everything else, including timeouts and connection errors
    throughput_rps: float  # HTTP 200s completed inside the window / window_s
    latency_ms: dict[str, float | None]  # p50 p90 p95 p99 p99.9 max mean, over ok requests
    status_counts: dict[str, int]
    exception_counts: dict[str, int]
    client_cpu_util: float  # load generator CPU seconds / elapsed: near 1.0 = client-bound
    server: dict  # ServerDelta as dict: queue_ms, compute_ms, batch_size, ...
    offered_rps: float | None = None  # open loop: sends actually issued per second
    max_send_lag_ms: float | None = None  # open loop: worst lateness of a send vs. its schedule
    unfinished: int = 0  # open loop: still in flight when the drain time ran out
    hdr_histogram: str = ""  # HdrHistogram (µs, ok requests) in its base64 encoding

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def label(self) -> str:
        return f"c={self.level:g}" if self.mode == CLOSED else f"{self.level:g} rps"


@dataclass
class SweepResult:
    url: str
    model: str
    payload: dict  # name, content_type, bytes
    started_at: str
    duration_s: float
    slo_p99_ms: float | None
    server_model: dict = field(default_factory=dict)  # the model's /v1/models entry
    host: dict = field(default_factory=dict)  # the load generator's machine
    levels: list[LevelResult] = field(default_factory=list)

    def of_mode(self, mode: str) -> list[LevelResult]:
        return [level for level in self.levels if level.mode == mode]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        known = {f.name for f in fields(LevelResult)}
        levels = [LevelResult(**{k: v for k, v in level.items() if k in known}) for level in data["levels"]]
        return cls(**{**data, "levels": levels})
