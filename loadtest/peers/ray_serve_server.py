"""Ray Serve peer: a deployment holding the ONNX Runtime session, batched by Ray Serve's own ``@serve.batch``
(``max_batch_size``, ``batch_wait_timeout_s``), ``num_replicas`` replicas, behind Ray Serve's HTTP proxy, the way
its docs show: a plain ``__call__`` on the Starlette request that hands the body to the batched method.

Ray is kept to this machine's size: a local ``ray.init(num_cpus=...)`` without the dashboard, one CPU per replica
(``ray_actor_options``); the benchmark turns Ray's usage stats off (RAY_USAGE_STATS_ENABLED=0). The image comes as the raw ``image/jpeg`` body, like segserve's /segment.
Run by segserve_loadtest.bench_peers inside its own virtualenv; never imported by segserve.

    python ray_serve_server.py --model-json peer_model.json --port 8000 --replicas 2 --cpus 2
"""
import argparse
import signal
import threading

import numpy as np
import ray
from peer_common import infer, load_config, postprocess, preprocess, session
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...): the CPUs Ray may schedule on")
parser.add_argument("--replicas", type=int, default=2, help="deployment replicas (each an ONNX Runtime session, 1 CPU)")
parser.add_argument("--threads", type=int, default=1, help="intra-op threads per replica's session")
parser.add_argument("--max-batch-size", type=int, default=8)
parser.add_argument("--batch-wait-timeout", type=float, default=0.004, help="seconds")
args = parser.parse_args()


# max_ongoing_requests >= max_batch_size, as Ray's batching guide asks, or no batch could ever fill
@serve.deployment(num_replicas=args.replicas, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2 * args.max_batch_size)
class Segment:
    def __init__(self, model_json: str, threads: int):
        self.cfg = load_config(model_json)
        self.session = session(self.cfg, threads)

    @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout)
    async def segment(self, bodies: list[bytes]) -> list[dict]:
        items = [preprocess(self.cfg, body) for body in bodies]
        labels = infer(self.cfg, self.session, np.stack([tensor for tensor, _ in items]))
        return [postprocess(self.cfg, plane, meta) for plane, (_, meta) in zip(labels, items)]

    async def __call__(self, request: Request):
        if request.url.path.rstrip("/").endswith("/healthz"):
            return JSONResponse({"ok": True})
        return JSONResponse(await self.segment(await request.body()))


if __name__ == "__main__":
    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Segment.bind(args.model_json, args.threads), route_prefix="/", name="segment")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
