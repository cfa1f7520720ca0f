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

import ray
from peer_common import load_work
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...): the CPUs Ray may schedule on")
parser.add_argument("--replicas", type=int, default=2, help="deployment replicas (each an ONNX Runtime session, 1 CPU)")
parser.add_argument("--threads", type=int, default=1, help="intra-op threads per replica's session")
parser.add_argument("--max-batch-size", type=int, default=8)
parser.add_argument("--batch-wait-timeout", type=float, default=0.004, help="seconds")
parser.add_argument("--own-json", action="store_true", help="render the body with the work's dumps (segserve's orjson "
                    "for the codec-sharing variant) instead of Starlette's JSONResponse")
args = parser.parse_args()


# max_ongoing_requests >= max_batch_size, as Ray's batching guide asks, or no batch could ever fill
@serve.deployment(num_replicas=args.replicas, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2 * args.max_batch_size)
class Segment:
    def __init__(self, model_json: str, threads: int, own_json: bool):
        self.own_json = own_json
        self.work = load_work(model_json, threads)

    @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout)
    async def segment(self, bodies: list[bytes]) -> list[dict]:
        items = [self.work.prepare(body) for body in bodies]
        return [self.work.finish(output, item) for output, item in zip(self.work.run(items), items)]

    async def __call__(self, request: Request):
        if request.url.path.rstrip("/").endswith("/healthz"):
            return JSONResponse({"ok": True})
        result = await self.segment(await request.body())
        return Response(self.work.dumps(result), media_type="application/json") if self.own_json else JSONResponse(result)


if __name__ == "__main__":
    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Segment.bind(args.model_json, args.threads, args.own_json), route_prefix="/", name="segment")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
