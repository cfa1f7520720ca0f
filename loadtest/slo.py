"""The service-level objective a run is judged against: a p99 latency bound and an error
ratio bound, either of which may be unset."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Slo:
    p99_ms: float | None = None
    error_ratio: float | None = None

    @property
    def enabled(self) -> bool:
        return self.p99_ms is not None or self.error_ratio is not None


@dataclass(frozen=True)
class SloVerdict:
    passed: bool
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "SLO passed" if self.passed else "SLO violated: " + "; ".join(self.violations)


def evaluate(slo: Slo, requests: int, failures: int, p99_ms: float | None) -> SloVerdict:
    """A run with no requests at all violates any enabled SLO: silence is not success."""
    violations: list[str] = []
    if slo.enabled and requests == 0:
        violations.append("no requests completed")
    else:
        if slo.p99_ms is not None and p99_ms is not None and p99_ms > slo.p99_ms:
            violations.append(f"p99 {p99_ms:g} ms > {slo.p99_ms:g} ms")
        error_ratio = failures / requests if requests else 0.0
        if slo.error_ratio is not None and error_ratio > slo.error_ratio:
            violations.append(f"error ratio {error_ratio:.4f} > {slo.error_ratio:g} ({failures}/{requests})")
    return SloVerdict(passed=not violations, violations=violations)
