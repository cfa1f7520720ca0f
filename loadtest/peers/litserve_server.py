"""LitServe peer: a ``LitAPI`` whose batching (``max_batch_size``, ``batch_timeout``) and worker processes
(``workers_per_device`` on ``accelerator="cpu"``) are LitServe's own, as its docs show: ``decode_request``
per request, ``batch``, ``predict`` on the batch, ``unbatch``, ``encode_response`` per request.

The image comes as a multipart upload (field ``image``): LitServe hands ``decode_request`` the parsed form
for multipart bodies (a raw ``image/jpeg`` body is read as JSON). Run by segserve_loadtest.bench_peers
inside its own virtualenv; never imported by segserve.

    python litserve_server.py --model-json peer_model.json --port 8000 --workers 2
"""
import argparse

import litserve as ls
from peer_common import load_work

parser = argparse.ArgumentParser()
parser.add_argument("--model-json", required=True)
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--workers", type=int, default=2, help="worker processes (workers_per_device on the one CPU device)")
parser.add_argument("--threads", type=int, default=1, help="intra-op threads per worker's session")
parser.add_argument("--max-batch-size", type=int, default=8)
parser.add_argument("--batch-timeout", type=float, default=0.004, help="seconds")
args = parser.parse_args()


class SegmentAPI(ls.LitAPI):
    def setup(self, device):
        self.work = load_work(args.model_json, args.threads)

    def decode_request(self, request):
        return self.work.prepare(request["image"].file.read())

    def batch(self, inputs):
        return inputs  # the work's run stacks the prepared items itself

    def predict(self, items):
        return list(zip(self.work.run(items), items))

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        labels, item = output
        return self.work.finish(labels, item)


if __name__ == "__main__":
    api = SegmentAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")
