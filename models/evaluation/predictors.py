"""Where predictions come from: a running server over HTTP (the whole stack: decode,
letterbox, batching, engine, restore, RLE, JSON), or an engine in this process."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from pycocotools import mask as mask_utils

from segserve_models.evaluation.datasets import Sample

# COCO mAP ranks every detection: ask for low-score ones too.
EVAL_SCORE_THRESHOLD = 0.05
EVAL_MAX_INSTANCES = 100


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


class HttpPredictor:
    """``client``: an ``httpx.Client`` to send the requests with (e.g. one bound to an app in
    this process); a new one by default."""

    def __init__(self, url: str, model: str, timeout_s: float = 120.0, client: httpx.Client | None = None, refine: str | None = None):
        self.url = url.rstrip("/")
        self.model = model
        self.refine = refine  # semantic: ?refine= (None: the model's default)
        self.client = client or httpx.Client(timeout=timeout_s)
        info = self.client.get(f"{self.url}/v1/models/{model}")
        info.raise_for_status()
        self.task = info.json()["task"]
        self.classes = info.json()["classes"]
        self.keypoint_names = (info.json().get("keypoints") or {}).get("names")

    def _post(self, sample: Sample, **params) -> dict:
        response = self.client.post(
            f"{self.url}/segment", content=sample.data, params={"model": self.model, **params},
            headers={"Content-Type": sample.content_type},
        )
        if response.status_code != 200:
            raise RuntimeError(f"{sample.name}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def semantic(self, sample: Sample) -> np.ndarray:
        labels = np.zeros((sample.height, sample.width), dtype=np.int32)
        for segment in self._post(sample, **({"refine": self.refine} if self.refine else {}))["segments"]:
            labels[_decode(segment["mask"]).astype(bool)] = segment["class_id"]
        return labels

    def instances(self, sample: Sample) -> list[tuple[int, float, dict]]:
        body = self._post(sample, score_threshold=EVAL_SCORE_THRESHOLD, max_instances=EVAL_MAX_INSTANCES)
        return [(i["class_id"], i["score"], i["mask"]) for i in body["instances"]]

    def keypoints(self, sample: Sample) -> list[tuple[int, float, list[float]]]:
        body = self._post(sample, score_threshold=EVAL_SCORE_THRESHOLD, max_instances=EVAL_MAX_INSTANCES)
        return [(i["class_id"], i["score"], i["keypoints"]) for i in body["instances"]]


class EnginePredictor:
    """The exported model run in-process: the same codecs, no server, no batcher."""

    def __init__(self, repository: Path, model: str, backend: str | None = None, refine: str | None = None):
        from segserve.engine import create_engine
        from segserve.repository import scan

        entries = {e.config.name: e for e in scan(repository)}
        if model not in entries:
            raise KeyError(f"model {model!r} not in {repository}; has {sorted(entries)}")
        self.entry = entries[model]
        self.config = self.entry.config
        self.task = self.config.task.value
        self.classes = self.config.classes
        self.keypoint_names = self.config.keypoints.names if self.config.keypoints is not None else None
        self.engine = create_engine(self.config, self.entry.version_dir, backend)
        self.refine = refine == "crf"  # semantic: the server's dense CRF (segserve.pipelines.refine)
        if self.refine and not self.config.output.has_scores:
            raise ValueError(f"{model} gives labels only: export it with --probabilities to evaluate refine=crf")
        if self.task in ("instance", "keypoints"):
            from segserve.contract.instance import InstanceParameters
            from segserve.graphs.maskrcnn import load_heads
            from segserve.pipelines.instance.runner import KeypointSplitRunner, SplitRunner

            canvas = (self.config.input.height, self.config.input.width)
            params = InstanceParameters.model_validate(self.config.parameters).model_copy(update={"max_instances": EVAL_MAX_INSTANCES})
            runner = KeypointSplitRunner if self.task == "keypoints" else SplitRunner
            self.runner = runner(self.engine, load_heads(self.config, self.entry.version_dir), params, canvas)

    def _image(self, sample: Sample) -> np.ndarray:
        from segserve.codecs.image import decode_image

        return decode_image(sample.data, max_pixels=10**9).rgb

    def semantic(self, sample: Sample) -> np.ndarray:
        from segserve.codecs.geometry import Letterbox
        from segserve.pipelines.semantic import infer_labels

        spec = self.config.input
        image = self._image(sample)
        box = Letterbox.fit(image.shape[0], image.shape[1], spec)
        letterboxed = box.apply(image, spec.pad_value)
        if not self.refine:
            return box.restore(infer_labels(self.engine, self.config, letterboxed[None])[0])
        from segserve.contract.video import SemanticParameters
        from segserve.pipelines.refine import refine_letterboxed
        from segserve.pipelines.semantic import infer_outputs

        labels, scores = infer_outputs(self.engine, self.config, letterboxed[None])
        settings = SemanticParameters.model_validate(self.config.parameters).crf
        return box.restore(refine_letterboxed(labels[0], scores[0], letterboxed, box.content_h, box.content_w, settings))

    def instances(self, sample: Sample) -> list[tuple[int, float, dict]]:
        [found] = self.runner([self._image(sample)], score_threshold=EVAL_SCORE_THRESHOLD)
        return [(i["class_id"], i["score"], i["rle"]) for i in found]

    def keypoints(self, sample: Sample) -> list[tuple[int, float, list[float]]]:
        [found] = self.runner([self._image(sample)], score_threshold=EVAL_SCORE_THRESHOLD)
        return [(i["class_id"], i["score"], i["keypoints"]) for i in found]
