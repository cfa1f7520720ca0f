"""``segserve export`` and ``segserve eval``: the build side's commands, added to the
``segserve`` command line through the ``segserve.commands`` entry points (pyproject.toml)."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

log = logging.getLogger("segserve")


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def cmd_export(args: argparse.Namespace) -> int:
    from segserve import logs

    logs.configure("info")
    try:
        export_bundled(args) if args.bundled else export_one(args)
    except ExportFailed:
        return 2
    return 0


class ExportFailed(Exception):
    """An export that failed, its reason already logged."""


def export_bundled(args: argparse.Namespace) -> None:
    """Every model of checkpoints/bundled.yaml, with its ``serving`` settings over the exporter's
    defaults (a model already exported and kept by --skip-existing keeps its config.yaml: it may
    have been tuned since)."""
    import yaml

    from segserve.contract.artifacts import CONFIG_FILE
    from segserve.contract.model_config import ModelConfig, load_config
    from segserve_models.weights import BUNDLED_MANIFEST

    manifest = yaml.safe_load(BUNDLED_MANIFEST.read_text())
    for name, entry in manifest.items():
        one = argparse.Namespace(**{**vars(args), "bundled": False, "name": name, "model": entry["model"],
                                    "weights": f"bundled:{name}", "input_size": entry.get("input_size"),
                                    "video_split": entry.get("video_split", False)})
        if export_one(one) is not None and entry.get("serving"):
            model_dir = Path(args.repository) / name
            config = _merged(load_config(model_dir).model_dump(mode="json"), entry["serving"])
            ModelConfig.model_validate(config).dump(model_dir / CONFIG_FILE)
            log.info("%s: serving settings %s", name, entry["serving"])


def _merged(base: dict, update: dict) -> dict:
    return {**base, **{k: _merged(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in update.items()}}


def export_one(args: argparse.Namespace) -> Path | None:
    """Export ``args.model``: the version folder written, or None if --skip-existing kept the one
    there. Raises ExportFailed."""
    from segserve.contract.artifacts import CONFIG_FILE
    from segserve.contract.model_config import latest_version, load_config
    from segserve.graphs import zoo
    from segserve_models.export import export_model
    from segserve_models.instance.export import export_instance_model
    from segserve_models.weights import WeightsError, WeightsSpec

    repository = Path(args.repository)
    name = args.name or args.model
    model_dir = repository / name
    if args.skip_existing and (model_dir / CONFIG_FILE).is_file() and latest_version(model_dir) is not None:
        # bundled checkpoints change with `make train`: a stale export gets a new version instead
        from segserve_models.video_split import (
            bundled_correction,
            exported_correction_sha256,
        )
        from segserve_models.weights import sha256_of

        exported = load_config(model_dir)
        correction = bundled_correction(args.weights) if args.video_split else None
        current = (
            not args.weights.startswith("bundled:")
            or exported.weights.detail == WeightsSpec.parse(args.weights).describe()
            and (not args.video_split or exported_correction_sha256(exported) == (sha256_of(correction) if correction else None))
        )
        if current:
            log.info("%s already exported (version %s); --skip-existing", name, latest_version(model_dir))
            return None
        log.info("%s: the bundled checkpoint or its video correction changed since version %s; exporting a new version",
                 name, latest_version(model_dir))
    specs = [WeightsSpec.parse(args.weights)] if args.weights != "auto" else [WeightsSpec("pretrained"), WeightsSpec("random")]
    size = _size(args.input_size) if args.input_size else None
    common = {"name": name, "classes": args.classes.split(",") if args.classes else None, "max_batch_size": args.max_batch_size}
    if zoo.get(args.model).task in ("instance", "keypoints"):  # R-CNNs resize by themselves: the size is their canvas
        export = partial(export_instance_model, canvas=size, **common)
    else:
        export = partial(export_model, input_size=size, output=args.output, dynamic_hw=args.dynamic_hw,
                         probabilities=args.probabilities, **common)
    for i, spec in enumerate(specs):
        try:
            version_dir = export(args.model, repository, spec)
        except WeightsError as exc:
            if i + 1 < len(specs):
                log.warning("%s; --weights auto falls back to RANDOM weights (masks will be meaningless)", exc)
                continue
            log.error("%s", exc)
            raise ExportFailed from exc
        log.info("exported %s -> %s", args.model, version_dir)
        if args.video_split:
            from segserve_models.video_split import (
                bundled_correction,
                export_video_split,
            )

            # bundled weights come with their trained video correction when there is one
            correction = bundled_correction(args.weights)
            log.info("video split%s -> %s", " with correction" if correction else "", export_video_split(repository, name, correction=correction))
        return version_dir
    raise ExportFailed


def cmd_eval(args: argparse.Namespace) -> int:
    from segserve_models.evaluation.run import main

    return main(args)


def add_export(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a torchvision model into the model repository")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="architecture, e.g. lraspp_mobilenet_v3_large, maskrcnn_resnet50_fpn or keypointrcnn_resnet50_fpn")
    which.add_argument("--bundled", action="store_true",
                       help="every bundled model (segserve_models/checkpoints/bundled.yaml: architecture, input size, video split "
                            "and tuned serving settings), from its checkpoint here")
    export.add_argument("--name", help="model name in the repository (default: the architecture)")
    export.add_argument(
        "--weights", default="pretrained",
        help="pretrained | random[:SEED] | bundled:NAME | PATH to a checkpoint | auto (pretrained, else random with a warning)",
    )
    export.add_argument("--repository", default="model_repository", help="model repository folder")
    export.add_argument("--classes", help="comma-separated class names (default: from the weights)")
    export.add_argument("--input-size", help="model input HxW, e.g. 512x512 (instance models: the canvas, multiples of 32)")
    export.add_argument("--max-batch-size", type=int)
    export.add_argument("--output", choices=["labels", "logits"], default="labels", help="in-graph argmax (labels) or logits")
    export.add_argument("--probabilities", action="store_true",
                        help="labels graphs: also output the class probabilities (uint8 softmax, 'probs') that "
                             "?refine=crf needs; without, the model answers labels only and cannot be refined")
    export.add_argument("--dynamic-hw", action="store_true", help="dynamic height/width axes (default: fixed, faster on CPU)")
    export.add_argument("--video-split", action="store_true",
                        help="LRASPP and DeepLabV3-MobileNetV3: also export the shallow/deep/fuse parts for keyframe feature "
                             "reuse on /segment/video (and, for bundled weights, their trained correction of stale features)")
    export.add_argument("--skip-existing", action="store_true", help="do nothing if the model already has a version")
    export.set_defaults(func=cmd_export)


def add_eval(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="accuracy (PA/MPA/mIoU, mask AP or keypoint AP) engine-direct or through a server")
    evaluate.add_argument("--model", required=True, help="model name in the repository / on the server")
    evaluate.add_argument("--url", help="evaluate through this running server (the whole stack)")
    evaluate.add_argument("--repository", default="model_repository", help="without --url: run the engine in-process")
    evaluate.add_argument("--backend", choices=["onnxruntime", "torch"], help="without --url: force a backend")
    evaluate.add_argument("--data", default="synthetic:64", help="synthetic[:N[:SEED]] | voc:ROOT[:SPLIT] | coco:IMAGES:ANNOTATIONS.json")
    evaluate.add_argument("--limit", type=int, help="at most this many images")
    evaluate.add_argument("--refine", choices=["none", "crf"],
                          help="semantic: ?refine= (crf: dense-CRF refinement; the model needs --probabilities); "
                               "default: the model's own")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(func=cmd_eval)

