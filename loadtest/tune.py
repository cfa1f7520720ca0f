"""``segserve tune MODEL``: find the serving configuration that suits this machine, by measuring.

Each candidate is the model's own files under a config.yaml that differs in the serving
settings only -- engine instances x threads per instance, the batch size the batcher forms
(``dynamic_batching.preferred_batch_size``: what the model accepts, ``max_batch_size``, stays), queue delay -- served
by a real `segserve serve` and driven by ab at the target concurrency. The search measures the
shipped configuration, then walks one setting at a time from it (placement, then batch size, then delay),
keeping the best so far: a few runs instead of the full grid, which on a small CPU would take
longer than anyone waits. Best = the most answers per second whose p99 meets ``--p99-ms``
(when given). The search measures each candidate once, one after another, so a machine whose load
changes under it (a shared one) can make the pick by itself; a pick other than the shipped
configuration is therefore confirmed: the two are measured alternately ``--confirm`` times each,
and the pick is kept only if its median throughput is higher with a median p99 no worse. What is
kept is written into the model's config.yaml unless ``--dry-run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from segserve.config import available_cpus
from segserve.contract.artifacts import CONFIG_FILE
from segserve.contract.model_config import AUTO_BATCH, ModelConfig, load_config
from segserve_loadtest.ab import AbError, run_ab, segment_url
from segserve_loadtest.payloads import default_images
from segserve_loadtest.server import SegserveProcess

log = logging.getLogger("segserve.tune")


@dataclass(frozen=True)
class Candidate:
    instances: int
    threads: int  # per instance (ONNX Runtime intra-op, or torch threads); 0 = segserve's default
    batch_size: int | str  # the batches the batcher forms (ModelConfig.batch_size), or "auto": measured at load
    max_queue_delay_ms: float

    @classmethod
    def of(cls, config: ModelConfig) -> "Candidate":
        threads = config.torch.threads if config.backends[0] == "torch" else config.onnxruntime.intra_op_threads
        batch = AUTO_BATCH if config.measures_batch_size else config.batch_size
        return cls(config.instances, threads, batch, config.dynamic_batching.max_queue_delay_ms)

    def apply(self, config: ModelConfig) -> ModelConfig:
        # the threads of the backend that of() read them from, only: an ONNX Runtime Mask R-CNN keeps its torch
        # heads' own threads (1 as exported; torch's default would oversubscribe the cores), so that
        # Candidate.of(config).apply(config) is config itself
        threads = ({"torch": config.torch.model_copy(update={"threads": self.threads})} if config.backends[0] == "torch"
                   else {"onnxruntime": config.onnxruntime.model_copy(update={"intra_op_threads": self.threads})})
        batching = {"max_queue_delay_ms": self.max_queue_delay_ms}
        if self.batch_size != Candidate.of(config).batch_size:
            batching["preferred_batch_size"] = self.batch_size
        return config.model_copy(update={
            "instances": self.instances,
            "dynamic_batching": config.dynamic_batching.model_copy(update=batching),
            **threads,
        })

    def label(self) -> str:
        threads = self.threads or "auto"
        return f"{self.instances}x{threads} threads, batch {self.batch_size}, delay {self.max_queue_delay_ms:g} ms"


@dataclass
class Trial:
    candidate: Candidate
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    failed: int
    error: str | None = None

    def meets(self, p99_ms: float | None) -> bool:
        return self.error is None and self.failed == 0 and (p99_ms is None or (self.p99_ms or 0) <= p99_ms)


def placements(cpus: int) -> list[tuple[int, int]]:
    """(instances, threads each) that use the CPUs without oversubscribing them."""
    return sorted({(i, max(1, cpus // i)) for i in range(1, min(cpus, 4) + 1)})


def stage_values(args: argparse.Namespace, cpus: int, config: ModelConfig) -> list[tuple[str, list]]:
    return [
        ("placement", [tuple(int(v) for v in p.split("x")) for p in args.placements.split(",")] if args.placements
         else placements(cpus)),
        # batches larger than what the model accepts are not candidates
        ("batch_size", [b for b in (int(v) for v in args.batch.split(",")) if b <= config.max_batch_size]),
        ("max_queue_delay_ms", [float(v) for v in args.delay_ms.split(",")]),
    ]


def vary(best: Candidate, stage: str, value) -> Candidate:
    if stage == "placement":
        return replace(best, instances=value[0], threads=value[1])
    return replace(best, **{stage: value})


def measure(model_dir: Path, config: ModelConfig, candidate: Candidate, args: argparse.Namespace, scratch: Path) -> Trial:
    """One candidate served from a scratch repository that links the model's versions."""
    repo = scratch / f"trial-{len(list(scratch.iterdir()))}"
    target = repo / config.name
    target.mkdir(parents=True)
    for version in model_dir.iterdir():
        if version.is_dir():
            (target / version.name).symlink_to(version.resolve(), target_is_directory=True)
    candidate.apply(config).dump(target / CONFIG_FILE)
    payload = default_images()[0]
    try:
        with SegserveProcess(repo, repo / "server.log") as server:
            url = segment_url(server.url, config.name)
            run_ab(url, payload, requests=max(4, args.concurrency), concurrency=min(4, args.concurrency))  # warm
            report = run_ab(url, payload, requests=1_000_000, concurrency=args.concurrency, time_limit_s=args.seconds)
    except AbError as exc:
        return Trial(candidate, 0.0, None, None, 0, error=str(exc))
    latency = report["percentiles_ms"]
    failed = report.get("failed_requests", 0) + report["non_2xx_responses"]
    return Trial(candidate, report["requests_per_second"], latency.get(50), latency.get(99), failed)


def best_of(trials: list[Trial], p99_ms: float | None) -> Trial | None:
    eligible = [t for t in trials if t.meets(p99_ms)]
    return max(eligible, key=lambda t: (t.requests_per_s, -(t.p99_ms or 0))) if eligible else None


def confirm(model_dir: Path, config: ModelConfig, shipped: Candidate, pick: Candidate, args: argparse.Namespace,
            scratch: Path) -> tuple[Candidate, list[Trial]]:
    """Shipped and pick measured alternately ``args.confirm`` times each. Returns (the one kept, the
    confirmation trials in order)."""
    trials = []
    for _ in range(args.confirm):
        for candidate in (shipped, pick):
            log.info("confirming: %s", candidate.label())
            trials.append(measure(model_dir, config, candidate, args, scratch))
    return confirmed(trials, shipped, pick, args.p99_ms), trials


def confirmed(trials: list[Trial], shipped: Candidate, pick: Candidate, p99_ms: float | None) -> Candidate:
    """The pick if its median req/s over ``trials`` is higher than the shipped one's and its median p99 no
    worse (or it meets the target in every trial and the shipped one does not), else the shipped one."""

    def medians(candidate: Candidate) -> tuple[float, float] | None:
        mine = [t for t in trials if t.candidate == candidate]
        if not mine or not all(t.meets(p99_ms) for t in mine):
            return None
        return statistics.median(t.requests_per_s for t in mine), statistics.median(t.p99_ms or 0 for t in mine)

    ours, theirs = medians(shipped), medians(pick)
    better = theirs is not None and (ours is None or (theirs[0] > ours[0] and theirs[1] <= ours[1]))
    return pick if better else shipped


def table(trials: list[Trial], chosen: Trial | None, shipped: Candidate) -> str:
    rows = ["| configuration | req/s | p50 ms | p99 ms | failed | |", "|---|---:|---:|---:|---:|---|"]
    for t in trials:
        mark = ", ".join(name for name, is_it in (("shipped", t.candidate == shipped),
                                                  ("best", chosen is not None and t.candidate == chosen.candidate)) if is_it)
        cell = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        rows.append(f"| {t.candidate.label()} | {t.requests_per_s:.1f} | {cell(t.p50_ms)} | {cell(t.p99_ms)} | "
                    f"{t.failed if t.error is None else t.error[:40]} | {mark} |")
    return "\n".join(rows)


def plot(trials: list[Trial], chosen: Trial | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for t in trials:
        if t.p99_ms is None:
            continue
        ax.scatter(t.p99_ms, t.requests_per_s, color="tab:red" if t is chosen else "tab:blue")
        ax.annotate(t.candidate.label(), (t.p99_ms, t.requests_per_s), fontsize=7)
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("requests/s")
    ax.set_title("segserve tune: each configuration under ab")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tune(args: argparse.Namespace) -> int:
    model_dir = Path(args.repository) / args.model
    config = load_config(model_dir)
    shipped = Candidate.of(config)
    cpus = available_cpus()
    trials: dict[Candidate, Trial] = {}
    best = shipped
    with tempfile.TemporaryDirectory(prefix="segserve-tune-") as tmp:
        log.info("measuring the shipped configuration: %s", shipped.label())
        trials[shipped] = measure(model_dir, config, shipped, args, Path(tmp))
        for stage, values in stage_values(args, cpus, config):
            for value in values:
                candidate = vary(best, stage, value)
                if candidate not in trials:
                    log.info("measuring %s", candidate.label())
                    trials[candidate] = measure(model_dir, config, candidate, args, Path(tmp))
            chosen = best_of(list(trials.values()), args.p99_ms)
            best = chosen.candidate if chosen else best
        results = list(trials.values())
        picked = best_of(results, args.p99_ms)
        confirmation: list[Trial] = []
        chosen = picked
        if picked is not None and picked.candidate != shipped and args.confirm:
            kept, confirmation = confirm(model_dir, config, shipped, picked.candidate, args, Path(tmp))
            chosen = trials[kept]
    print(f"segserve tune {config.name}: {cpus} CPUs, ab -c {args.concurrency} for {args.seconds:g} s per configuration\n")
    print(table(results, chosen, shipped))
    if confirmation:
        verdict = "kept" if chosen is picked else "not confirmed: the shipped configuration stays"
        print(f"\nthe search's pick ({picked.candidate.label()}) against the shipped one, alternately, "
              f"{args.confirm} times each: {verdict}\n")
        print(table(confirmation, chosen, shipped))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps({
        "model": config.name, "cpus": cpus, "concurrency": args.concurrency, "seconds": args.seconds, "p99_ms": args.p99_ms,
        "shipped": asdict(shipped), "best": asdict(chosen.candidate) if chosen else None,
        "search_best": asdict(picked.candidate) if picked else None, "confirm": args.confirm,
        "trials": [{**asdict(t), "candidate": asdict(t.candidate)} for t in results],
        "confirmation": [{**asdict(t), "candidate": asdict(t.candidate)} for t in confirmation],
    }, indent=2))
    plot(results, chosen, out / "tune.png")
    if chosen is None:
        print("\nno configuration met the target; config.yaml left as it was")
        return 1
    print(f"\nbest: {chosen.candidate.label()} ({out / 'tune.png'})")
    if args.dry_run:
        print("--dry-run: config.yaml left as it was")
    elif chosen.candidate != shipped:
        chosen.candidate.apply(config).dump(model_dir / CONFIG_FILE)
        print(f"written into {model_dir / CONFIG_FILE}")
    return 0


def add_tune(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tune", help="measure serving configurations on this machine and keep the best")
    parser.add_argument("model", help="model name in the repository")
    parser.add_argument("--repository", default="model_repository", help="model repository folder")
    parser.add_argument("--concurrency", type=int, default=32, help="ab -c: the load to tune for")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per configuration")
    parser.add_argument("--p99-ms", type=float, help="latency target: the fastest configuration whose p99 meets it")
    parser.add_argument("--placements", help="instances x threads to try, e.g. 1x2,2x1 (default: those the CPUs allow)")
    parser.add_argument("--batch", default="1,2,4,8",
                        help="batch sizes to try (dynamic_batching.preferred_batch_size; those above max_batch_size are skipped)")
    parser.add_argument("--delay-ms", default="0,2,5", help="max queue delays to try (ms)")
    parser.add_argument("--confirm", type=int, default=3,
                        help="rounds of the search's pick against the shipped configuration, alternately, before the pick is kept "
                             "(0: keep the search's pick as measured)")
    parser.add_argument("--out", default="out/tune", help="folder for tune.json and tune.png")
    parser.add_argument("--dry-run", action="store_true", help="print the best configuration, leave config.yaml as it is")
    parser.set_defaults(func=lambda args: tune(args))
