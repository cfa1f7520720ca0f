"""NVIDIA PyTriton peer: the real Triton Inference Server core (dynamic batching, KServe v2 HTTP) with a
Python model, bound the way PyTriton's docs show (``@batch`` infer function, ``ModelConfig`` with a
``DynamicBatcher``, a list of infer functions = that many model instances).

One input ``image`` (BYTES, the encoded JPEG), one output ``result`` (BYTES, the segserve-shaped JSON);
clients post it with the KServe binary-data extension. Run by segserve_loadtest.bench_peers inside its
own virtualenv; never imported by segserve.

    python pytriton_server.py --model-json peer_model.json --http-port 8000 --grpc-port 8001 --metrics-port 8002
"""
import argparse

import numpy as np
from peer_common import load_work
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--http-port", type=int, default=8000)
parser.add_argument("--grpc-port", type=int, default=8001)
parser.add_argument("--metrics-port", type=int, default=8002)
parser.add_argument("--instances", type=int, default=2, help="model instances (each an ONNX Runtime session)")
parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session")
parser.add_argument("--max-batch-size", type=int, default=8)
parser.add_argument("--max-queue-delay-us", type=int, default=4000)
args = parser.parse_args()


def make_infer_fn(work):
    @batch
    def infer_fn(image: np.ndarray):
        items = [work.prepare(bytes(row[0])) for row in image]
        # the script renders the body itself: json.dumps, or segserve's orjson in the codec-sharing variant
        out = [work.dumps(work.finish(output, item)) for output, item in zip(work.run(items), items)]
        return {"result": np.array(out, dtype=np.object_).reshape(-1, 1)}

    return infer_fn


config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                      metrics_port=args.metrics_port)
with Triton(config=config) as triton:
    triton.bind(
        model_name="segment",
        infer_func=[make_infer_fn(load_work(args.model_json, args.threads)) for _ in range(args.instances)],
        inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name="result", dtype=np.bytes_, shape=(1,))],
        config=ModelConfig(max_batch_size=args.max_batch_size,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)),
        strict=False,
    )
    triton.serve()
