"""What one refusal at capacity costs the server: ``POST /segment`` through the real ASGI app
(no sockets) to a model whose in-flight budget is set to 0, so every call is a 503; the CPU
time of the calling thread per call (``time.thread_time``: what other processes on the
machine do counts less than in wall time).

    python -m segserve_loadtest.bench_shed [--repository model_repository] [--calls 3000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from segserve.config import Settings
from segserve.server import create_app
from segserve_loadtest.bench_overhead import photo


async def post_segment(app, body: bytes, model: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/segment", "raw_path": b"/segment", "query_string": f"model={model}".encode(), "root_path": "",
             "headers": [(b"host", b"bench"), (b"content-type", b"image/jpeg"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # never disconnects

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def measure(repository: Path, model: str, calls: int, runs: int) -> list[float]:
    app = create_app(Settings(model_repository=repository, models=[model], grpc_port=None, warmup=False))
    body = photo().body
    async with app.router.lifespan_context(app):
        app.state.manager.get(model).in_flight.limit = 0
        assert await post_segment(app, body, model) == 503
        per_call = []
        for _ in range(runs):
            started = time.thread_time()
            for _ in range(calls):
                await post_segment(app, body, model)
            per_call.append((time.thread_time() - started) / calls)
    return per_call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.bench_shed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="shapes_lraspp")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    for seconds in asyncio.run(measure(args.repository, args.model, args.calls, args.runs)):
        print(f"{seconds * 1e6:.0f} us of CPU per 503 ({args.calls} sequential calls, in-process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
