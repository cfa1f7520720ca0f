"""The per-request work every peer does, written once for every peer (naive FastAPI, LitServe, PyTriton):
plain PIL decode, letterbox (PIL bilinear resize, pad bottom/right with the model's pad value),
the exported ONNX graph on ONNX Runtime CPU, nearest restore to the original size, one COCO RLE
per class present (pycocotools), a dict shaped like segserve's JSON. Imported only by the peer
scripts, inside their own virtualenvs; segserve never imports this."""
import io
import json

import numpy as np
import onnxruntime as ort
from PIL import Image
from pycocotools import mask as mask_utils


def load_config(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def session(cfg: dict, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per physical core)
    return ort.InferenceSession(cfg["onnx"], options, providers=["CPUExecutionProvider"])


def preprocess(cfg: dict, data: bytes) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """JPEG/PNG bytes -> ((3, H, W) uint8 model input, (h, w, content_h, content_w))."""
    H, W = cfg["height"], cfg["width"]
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    scale = min(H / h, W / w)
    cw, ch = min(W, max(1, round(w * scale))), min(H, max(1, round(h * scale)))
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = cfg["pad_value"]
    canvas[:ch, :cw] = np.asarray(image.resize((cw, ch), Image.BILINEAR))
    return canvas.transpose(2, 0, 1), (h, w, ch, cw)


def postprocess(cfg: dict, labels: np.ndarray, meta: tuple[int, int, int, int]) -> dict:
    """(H, W) model labels -> segserve-shaped result dict at the original size."""
    h, w, ch, cw = meta
    rows = np.minimum(((np.arange(h) + 0.5) * (ch / h)).astype(int), ch - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (cw / w)).astype(int), cw - 1)
    full = labels[rows][:, cols]
    classes = cfg["classes"]
    segments = []
    for c in np.unique(full):
        rle = mask_utils.encode(np.asfortranarray(full == c, dtype=np.uint8))
        segments.append({"class_id": int(c), "label": classes[c], "area": int(mask_utils.area(rle)),
                         "mask": {"size": [h, w], "counts": rle["counts"].decode()}})
    return {"model": cfg["name"], "width": w, "height": h, "classes": classes, "segments": segments}


def infer(cfg: dict, sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, H, W) labels."""
    return sess.run([cfg["output"]], {cfg["input"]: batch})[0]
