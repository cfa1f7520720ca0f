"""BentoML peer: a ``@bentoml.service`` with ``workers`` worker processes, each holding an ONNX Runtime session,
and one ``@bentoml.api(batchable=True)`` method: BentoML's adaptive batching merges the concurrent requests'
lists (``max_batch_size``; the batch window is BentoML's own, adapted to the traffic, under ``max_latency_ms``),
as BentoML's docs show.

A batchable API takes one list argument: each request posts its image as one file of the multipart field
``images`` (BentoML hands file inputs over as ``pathlib.Path``) and gets a one-element JSON list back.

Run by segserve_loadtest.bench_peers inside its own virtualenv; never imported by segserve. Run as a script it
puts its options into the environment and execs ``bentoml serve`` on this module (BentoML imports it again in
each worker; the decorator's settings are read when the module is imported):

    python bentoml_server.py --model-json peer_model.json --port 8000 --workers 2
"""
import argparse
import os
import sys
from pathlib import Path

import bentoml
from peer_common import load_work

SETTINGS = {"model_json": "", "workers": "2", "threads": "1", "max_batch_size": "8", "max_latency_ms": "60000"}


def setting(name: str) -> str:
    return os.environ.get(f"PEER_{name.upper()}", SETTINGS[name])


@bentoml.service(workers=int(setting("workers")), traffic={"timeout": 120})
class Segment:
    def __init__(self) -> None:
        self.work = load_work(setting("model_json"), int(setting("threads")))

    @bentoml.api(batchable=True, max_batch_size=int(setting("max_batch_size")), max_latency_ms=int(setting("max_latency_ms")))
    def segment(self, images: list[Path]) -> list[dict]:
        items = [self.work.prepare(image.read_bytes()) for image in images]
        return [self.work.finish(output, item) for output, item in zip(self.work.run(items), items)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-json", required=True)
    parser.add_argument("--port", type=int, default=3000)
    for name in ("workers", "threads", "max_batch_size", "max_latency_ms"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=int(SETTINGS[name]))
    args = parser.parse_args()
    for name in SETTINGS:
        os.environ[f"PEER_{name.upper()}"] = str(getattr(args, name))
    os.environ.setdefault("BENTOML_HOME", os.path.join(sys.prefix, "bentoml-home"))  # inside the peer's venv
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    here = os.path.dirname(os.path.abspath(__file__))
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", "bentoml_server:Segment", "--working-dir", here,
                              "--host", "127.0.0.1", "--port", str(args.port)])
