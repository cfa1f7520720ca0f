"""The server a user writes by hand: FastAPI + uvicorn, plain PIL, one ONNX Runtime session, no batching.

    python naive_fastapi.py --model-json peer_model.json --port 8000
Run by segserve_loadtest.bench_peers inside its own virtualenv; never imported by segserve."""
import argparse
import io
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pycocotools import mask as mask_utils

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--port", type=int, default=8000)
args = parser.parse_args()
cfg = json.load(open(args.model_json))
H, W, classes = cfg["height"], cfg["width"], cfg["classes"]
session = ort.InferenceSession(cfg["onnx"], providers=["CPUExecutionProvider"])
app = FastAPI()


def predict(data: bytes) -> dict:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    scale = min(H / h, W / w)
    cw, ch = min(W, max(1, round(w * scale))), min(H, max(1, round(h * scale)))
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = cfg["pad_value"]
    canvas[:ch, :cw] = np.asarray(image.resize((cw, ch), Image.BILINEAR))
    labels = session.run([cfg["output"]], {cfg["input"]: canvas.transpose(2, 0, 1)[None]})[0][0]
    rows = np.minimum(((np.arange(h) + 0.5) * (ch / h)).astype(int), ch - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (cw / w)).astype(int), cw - 1)
    full = labels[rows][:, cols]
    segments = []
    for c in np.unique(full):
        rle = mask_utils.encode(np.asfortranarray(full == c, dtype=np.uint8))
        segments.append({"class_id": int(c), "label": classes[c], "area": int(mask_utils.area(rle)),
                         "mask": {"size": [h, w], "counts": rle["counts"].decode()}})
    return {"model": cfg["name"], "width": w, "height": h, "classes": classes, "segments": segments}


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/segment")
async def segment(request: Request):
    return await run_in_threadpool(predict, await request.body())


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
