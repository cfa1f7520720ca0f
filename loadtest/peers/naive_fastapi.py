"""The server a user writes by hand: FastAPI + uvicorn, plain PIL, one ONNX Runtime session, no batching.

    python naive_fastapi.py --model-json peer_model.json --port 8000
Run by segserve_loadtest.bench_peers inside its own virtualenv; never imported by segserve. The
per-request work (decode, letterbox, restore, RLE) is peer_common's, the same for every peer (plain PIL, or segserve's
codecs in the naive+codecs variant)."""
import argparse

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from peer_common import load_work

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--own-json", action="store_true", help="render the body with the work's dumps (segserve's orjson "
                    "for the codec-sharing variant) instead of FastAPI's encoder")
args = parser.parse_args()
work = load_work(args.model_json)
app = FastAPI()


def predict(data: bytes) -> dict | Response:
    item = work.prepare(data)
    result = work.finish(work.run([item])[0], item)
    return Response(work.dumps(result), media_type="application/json") if args.own_json else result


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/segment")
async def segment(request: Request):
    return await run_in_threadpool(predict, await request.body())


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
