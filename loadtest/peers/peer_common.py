"""The per-request work every peer does, written once for every peer (naive FastAPI, LitServe, PyTriton,
Ray Serve, BentoML), in three steps a batching server runs apart: ``prepare`` per request (bytes -> model
input), ``run`` per batch (the exported ONNX graph on ONNX Runtime CPU), ``finish`` per request (-> a dict
shaped like segserve's JSON); ``dumps`` renders it where a peer script writes the body itself.

Which work is the peer model JSON's choice (bench_peers.model_json writes it):

* ``"codecs": "pil"`` (semantic models): the way the peers' own docs show: plain PIL decode at full size,
  letterbox with PIL's bilinear resize, nearest restore to the original size, one pycocotools RLE per class
  present, ``json.dumps``;
* ``"codecs": "segserve"``: segserve's own codec functions, imported from the repository's ``service/``
  (on PYTHONPATH as the package ``segserve``; the peer's virtualenv has only what those codecs import):
  the draft-scale JPEG decode, Letterbox (torch's antialiased resize), the run-based RLE straight from the
  model-resolution map, orjson through segserve.codecs.jsonbytes, and the ONNX Runtime session options
  segserve's engine uses (no spinning threads). Only the serving layer then differs from segserve.
* ``"task": "instance"`` (Mask R-CNN, always with segserve's code): segserve's split path: draft decode,
  rcnn_input.preprocess onto the model's canvas, ``collate``, ``backbone.onnx`` on ONNX Runtime, the torch
  RPN/RoI heads from the version's weights.pt (segserve.graphs.maskrcnn), the box paste to RLE
  (segserve.codecs.detections) -- no peer can run that split the way its docs show without that code.

Imported only by the peer scripts, inside their own virtualenvs; segserve never imports this."""
import io
import json
import os
import sys
from pathlib import Path

# A "+codecs" variant: segserve's service/ (as the package segserve) and the codecs' libraries, after the peer's
# own site-packages (bench_peers.ensure_codec_path); empty for the plain peers
sys.path.extend(p for p in os.environ.get("PEER_CODEC_PATH", "").split(os.pathsep) if p)

import numpy as np  # noqa: E402 - after the path: the variants' deps folder may hold what the venv lacks
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

MAX_IMAGE_PIXELS = 40_000_000  # segserve's default limit (its settings' max_image_pixels)


def load_config(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def session(cfg: dict, threads: int = 0, spinning: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per physical core)
    if not spinning:  # what segserve's engine sets (allow_spinning: false in the exported config.yaml)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(cfg["onnx"], options, providers=["CPUExecutionProvider"])


class PilSemantic:
    """The peers' own way: plain PIL, pycocotools on the full-size map, json.dumps."""

    def __init__(self, cfg: dict, threads: int = 0):
        self.cfg, self.session = cfg, session(cfg, threads)

    def prepare(self, data: bytes) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """JPEG/PNG bytes -> ((3, H, W) uint8 model input, (h, w, content_h, content_w))."""
        cfg = self.cfg
        H, W = cfg["height"], cfg["width"]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        scale = min(H / h, W / w)
        cw, ch = min(W, max(1, round(w * scale))), min(H, max(1, round(h * scale)))
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = cfg["pad_value"]
        canvas[:ch, :cw] = np.asarray(image.resize((cw, ch), Image.BILINEAR))
        return canvas.transpose(2, 0, 1), (h, w, ch, cw)

    def run(self, items: list) -> list[np.ndarray]:
        """(N, 3, H, W) uint8 -> N (H, W) label maps."""
        batch = np.stack([tensor for tensor, _ in items])
        return list(self.session.run([self.cfg["output"]], {self.cfg["input"]: batch})[0])

    def finish(self, labels: np.ndarray, item) -> dict:
        """(H, W) model labels -> segserve-shaped result dict at the original size."""
        h, w, ch, cw = item[1]
        rows = np.minimum(((np.arange(h) + 0.5) * (ch / h)).astype(int), ch - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * (cw / w)).astype(int), cw - 1)
        full = labels[rows][:, cols]
        classes = self.cfg["classes"]
        segments = []
        for c in np.unique(full):
            rle = mask_utils.encode(np.asfortranarray(full == c, dtype=np.uint8))
            segments.append({"class_id": int(c), "label": classes[c], "area": int(mask_utils.area(rle)),
                             "mask": {"size": [h, w], "counts": rle["counts"].decode()}})
        return {"model": self.cfg["name"], "width": w, "height": h, "classes": classes, "segments": segments}

    @staticmethod
    def dumps(result: dict) -> bytes:
        return json.dumps(result).encode()


class SegserveSemantic(PilSemantic):
    """segserve's semantic pipeline's codec calls (segserve.pipelines.semantic: decode_input, to_input, encode)."""

    def __init__(self, cfg: dict, threads: int = 0):
        from segserve.contract.model_config import load_config as load_model_config

        self.cfg, self.session = cfg, session(cfg, threads, spinning=False)
        self.spec = load_model_config(Path(cfg["folder"])).input

    def prepare(self, data: bytes):
        from segserve.codecs.geometry import Letterbox
        from segserve.codecs.image import decode_image

        image = decode_image(data, MAX_IMAGE_PIXELS, lambda h, w: Letterbox.fit(h, w, self.spec).min_decode_size())
        box = Letterbox.fit(image.height, image.width, self.spec)
        return box.apply(image.rgb, self.spec.pad_value), box

    def finish(self, labels: np.ndarray, item) -> dict:
        from segserve.codecs.masks import restored_segments

        box = item[1]
        segments = restored_segments(labels, box.restore_index(), self.cfg["classes"])
        return {"model": self.cfg["name"], "width": box.src_w, "height": box.src_h, "classes": self.cfg["classes"], "segments": segments}

    @staticmethod
    def dumps(result: dict) -> bytes:
        from segserve.codecs.jsonbytes import dumps

        return dumps(result, floats=False)


class SegserveInstance:
    """segserve's Mask R-CNN split path (segserve.pipelines.instance: SplitRunner's prepare / run_batch / finish)."""

    def __init__(self, cfg: dict, threads: int = 0):
        import torch
        from segserve.contract.instance import InstanceParameters
        from segserve.contract.model_config import load_config as load_model_config
        from segserve.graphs.maskrcnn import load_heads

        self.cfg, self.session = cfg, session(cfg, threads, spinning=False)
        config = load_model_config(Path(cfg["folder"]))
        self.params = InstanceParameters.model_validate(config.parameters)
        self.canvas = (config.input.height, config.input.width)  # the split path's fixed canvas, as segserve's
        self.heads = load_heads(config, Path(cfg["version_dir"]), "cpu")
        if threads:  # segserve: config.torch.threads for the heads (process-wide: torch has one pool)
            torch.set_num_threads(threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.inputs = [i.name for i in self.session.get_inputs()]

    def prepare(self, data: bytes):
        from segserve.codecs.image import decode_image
        from segserve.codecs.rcnn_input import preprocess, resize_scale, resized_size

        p = self.params
        image = decode_image(data, MAX_IMAGE_PIXELS,
                             lambda h, w: resized_size(h, w, resize_scale(h, w, p.min_size, p.max_size, self.canvas)))
        resized, meta = preprocess(image.rgb, p.min_size, p.max_size, self.canvas, p.canvas_dtype)
        return resized, meta, (image.height, image.width)

    def run(self, items: list) -> list:
        from segserve.codecs.rcnn_input import collate

        metas = [meta for _, meta, _ in items]
        batch = collate([resized for resized, _, _ in items], metas)
        features = dict(zip(self.outputs, self.session.run(self.outputs, {name: np.ascontiguousarray(batch[name]) for name in self.inputs})))
        return self.heads(features, [m.resized_size for m in metas], batch["images"].shape[-2:])

    def finish(self, detections, item) -> dict:
        from segserve.codecs.detections import to_instances
        from segserve.codecs.rcnn_input import ImageMeta

        _, meta, (height, width) = item
        p, classes = self.params, self.cfg["classes"]
        # boxes and masks go back to the image as received, not to its JPEG draft (as segserve's encode)
        meta = ImageMeta(original_size=(height, width), resized_size=meta.resized_size)
        instances = [{"class_id": i["class_id"], "label": classes[i["class_id"]] if i["class_id"] < len(classes) else str(i["class_id"]),
                      "score": i["score"], "box": i["box"], "mask": i["rle"]}
                     for i in to_instances(detections, meta, p.score_threshold, p.max_instances, p.mask_threshold)]
        return {"model": self.cfg["name"], "task": "instance", "width": width, "height": height, "instances": instances}

    @staticmethod
    def dumps(result: dict) -> bytes:
        from segserve.codecs.jsonbytes import dumps

        return dumps(result)


def load_work(path: str, threads: int = 0):
    """The model JSON's work (see the module docstring) with its ONNX Runtime session of ``threads`` intra-op threads."""
    cfg = load_config(path)
    if cfg.get("task") == "instance":
        return SegserveInstance(cfg, threads)
    return (SegserveSemantic if cfg.get("codecs") == "segserve" else PilSemantic)(cfg, threads)
