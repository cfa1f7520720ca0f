"""The server a user writes by hand: FastAPI + uvicorn, plain PIL, one ONNX Runtime session, no batching.

    python naive_fastapi.py --model-json peer_model.json --port 8000
Run by segserve_loadtest.bench_peers inside its own virtualenv; never imported by segserve. The
per-request work (decode, letterbox, restore, RLE) is peer_common's, the same for every peer."""
import argparse

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from peer_common import infer, load_config, postprocess, preprocess, session

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--port", type=int, default=8000)
args = parser.parse_args()
cfg = load_config(args.model_json)
sess = session(cfg)
app = FastAPI()


def predict(data: bytes) -> dict:
    image, meta = preprocess(cfg, data)
    return postprocess(cfg, infer(cfg, sess, image[None])[0], meta)


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/segment")
async def segment(request: Request):
    return await run_in_threadpool(predict, await request.body())


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
