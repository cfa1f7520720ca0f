"""Dense-CRF refinement (``?refine=crf``) measured on the bundled LRASPP's held-out synthetic scenes:
mIoU, boundary F-score and trimap mIoU with and without it, and its cost in ms per image.

    python -m segserve_models.evaluation.crf_bench                     # = make bench-crf: the reported figures
    python -m segserve_models.evaluation.crf_bench --tune              # pick CrfSettings on the validation split

The model is the bundled ``shapes_lraspp`` exported with ``--probabilities`` at 256x256 (into a temporary
repository unless ``--repository`` holds one named ``--model``). Each scene goes through the serving code
in-process: the same decode, letterbox, engine and restore as ``/segment``, and the same CRF call as
``SemanticModel.encode`` (``segserve.pipelines.refine.refine_letterboxed``), so with and without differ only
by the CRF, and its time is the CRF's alone (one thread, as one codec-pool worker runs it).

Splits (held-out seeds, which training never touches, models/train.py): **test** = the 64 scenes
docs/accuracy.md reports everywhere (``synthetic:64``); **validation** = 32 other scenes, the only
ones ``--tune`` looks at. The reported figures use the defaults that tuning picked (contract.refine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from segserve_models.evaluation import datasets
from segserve_models.evaluation.metrics import BoundaryScore, ConfusionMatrix

MODEL = "shapes_crf"
INPUT_SIZE = (256, 256)
TEST_SCENES = 64
VALIDATION_SCENES = 32
VALIDATION_FIRST_SEED = datasets.HELD_OUT_SEED_BASE + 1_000_000  # far from the test split's seeds
BOUNDARY_RADIUS_PX = 3  # at the original resolution (the scenes are ~300-700 px a side)

# --tune: a few values around pydensecrf's README example (bilateral sxy 80, srgb 13, compat 10),
# scaled for 256 px model inputs; the gaussian (smoothness) kernel stays at its 3 px / 3.
TUNE_GRID = [
    {"bilateral_sxy": sxy, "bilateral_srgb": srgb, "bilateral_compat": compat}
    for sxy in (20.0, 40.0, 80.0)
    for srgb in (5.0, 13.0, 30.0)
    for compat in (5.0, 10.0)
]


def export_probabilities_model(repository: Path) -> None:
    from segserve_models.export import export_model
    from segserve_models.weights import WeightsSpec

    export_model("lraspp_mobilenet_v3_large", repository, WeightsSpec.parse("bundled:shapes_lraspp"), name=MODEL,
                 input_size=INPUT_SIZE, probabilities=True, progress=False)


class Scenes:
    """The split's scenes decoded and through the engine once: (truth, letterbox, labels, scores, input)."""

    def __init__(self, repository: Path, model: str, count: int, first_seed: int):
        from segserve.codecs.geometry import Letterbox
        from segserve.codecs.image import decode_image
        from segserve.engine import create_engine
        from segserve.repository import scan
        from segserve.pipelines.semantic import infer_outputs

        entry = {e.config.name: e for e in scan(repository)}[model]
        self.config = config = entry.config
        if not config.output.has_scores:
            raise SystemExit(f"{model} has no class scores: export it with --probabilities")
        engine = create_engine(config, entry.version_dir, "onnxruntime")
        self.items = []
        engine_s = []
        for sample in datasets.synthetic(count, first_seed):
            rgb = decode_image(sample.data, max_pixels=10**9).rgb
            box = Letterbox.fit(rgb.shape[0], rgb.shape[1], config.input)
            image = box.apply(rgb, config.input.pad_value)
            start = time.perf_counter()
            labels, scores = infer_outputs(engine, config, image[None])
            engine_s.append(time.perf_counter() - start)
            self.items.append((sample.labels, box, labels[0], scores[0], image))
        engine.close()
        self.engine_ms = 1000 * statistics.median(engine_s)


def evaluate(scenes: Scenes, settings=None) -> dict:
    """Without the CRF (``settings`` None) or with it: accuracy, boundary quality, CRF ms per image."""
    from segserve.pipelines.refine import refine_letterboxed

    classes = scenes.config.classes
    matrix, boundary, crf_s, crf_cpu_s = ConfusionMatrix(len(classes)), BoundaryScore(len(classes), BOUNDARY_RADIUS_PX), [], []
    for truth, box, labels, scores, image in scenes.items:
        if settings is not None:
            start, start_cpu = time.perf_counter(), time.thread_time()
            labels = refine_letterboxed(labels, scores, image, box.content_h, box.content_w, settings)
            crf_s.append(time.perf_counter() - start)
            crf_cpu_s.append(time.thread_time() - start_cpu)
        prediction = box.restore(labels)
        matrix.update(prediction, truth)
        boundary.update(prediction, truth)
    result = {**matrix.results(classes), **boundary.results(classes), "images": len(scenes.items)}
    if crf_s:
        ms = sorted(1000 * s for s in crf_s)
        result["crf_ms"] = {"mean": statistics.fmean(ms), "p50": ms[len(ms) // 2], "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
                            # the CPU time of the thread that ran it: what it costs a core, however busy the machine
                            "cpu_mean": 1000 * statistics.fmean(crf_cpu_s)}
    return result


ROW = "| {name} | {pa:.2f} | {miou:.2f} | {bf:.2f} | {tri:.2f} | {ms} |"


def row(name: str, r: dict) -> str:
    ms = "-" if "crf_ms" not in r else (
        f"{r['crf_ms']['mean']:.1f} (p50 {r['crf_ms']['p50']:.1f}, p95 {r['crf_ms']['p95']:.1f}; CPU {r['crf_ms']['cpu_mean']:.1f})")
    return ROW.format(name=name, pa=100 * r["pixel_accuracy"], miou=100 * r["mean_iou"], bf=100 * r["boundary_f"],
                      tri=100 * r["trimap_miou"], ms=ms)


HEADER = ("| | PA | mIoU | boundary F (3 px) | trimap mIoU (3 px) | CRF ms / image: wall mean (p50, p95; thread CPU mean) |\n"
          "|---|---:|---:|---:|---:|---:|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, help="holds --model exported with --probabilities (default: export one)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--tune", action="store_true", help="compare TUNE_GRID on the validation split instead")
    parser.add_argument("--scenes", type=int, help="scenes of the split (default: 64 test, 32 validation)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from segserve.contract.refine import CrfSettings

    with tempfile.TemporaryDirectory() as tmp:
        repository = args.repository
        if repository is None:
            repository = Path(tmp)
            export_probabilities_model(repository)
        if args.tune:
            scenes = Scenes(repository, args.model, args.scenes or VALIDATION_SCENES, VALIDATION_FIRST_SEED)
        else:
            scenes = Scenes(repository, args.model, args.scenes or TEST_SCENES, datasets.HELD_OUT_SEED_BASE)

    split = "validation" if args.tune else "test"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{args.model}: {len(scenes.items)} {split} scenes, engine {scenes.engine_ms:.1f} ms / image (median, batch 1); "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(HEADER)
    results = {"split": split, "scenes": len(scenes.items), "engine_ms_median": scenes.engine_ms, "cpus": os.cpu_count(),
               "load_average": load, "runs": []}
    base = evaluate(scenes)
    print(row("without CRF", base), flush=True)
    results["runs"].append({"crf": None, **base})
    grid = [CrfSettings(**values) for values in TUNE_GRID] if args.tune else [CrfSettings()]
    for settings in grid:
        r = evaluate(scenes, settings)
        changed = {k: v for k, v in settings.model_dump().items() if v != CrfSettings.model_fields[k].default}
        print(row(f"CRF {settings.model_dump() if args.tune else 'defaults'}" + (f" {changed}" if changed and not args.tune else ""), r),
              flush=True)
        results["runs"].append({"crf": settings.model_dump(), **r})
    if args.tune:
        best = max(results["runs"][1:], key=lambda r: r["mean_iou"])
        print(f"best validation mIoU: {100 * best['mean_iou']:.2f} with {best['crf']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
